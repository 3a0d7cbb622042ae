"""Metadata as people read it in the UI: numbers to meaningful digits, lists as tables."""

import math
from typing import Any

import dagster as dg

from llm_pipeline.contracts import StageValue


def significant(value: float, digits: int = 5) -> float:
    """3.7504754066467285 -> 3.7505; 8219.074953133586 -> 8219.1. Non-finite values pass through."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def table(rows: list[dict], columns: dict[str, str]) -> dg.MetadataValue:
    """rows of {column: value}; columns maps each column name to its type ("string", "int", "float")."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({name: row[name] for name in columns}) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()]),
    )


def stage_metadata(value: StageValue) -> dict[str, Any]:
    """A stage value's declared metadata (contracts.py), as the UI shows it: URIs as paths, mappings as JSON
    (numbers and strings as they are)."""
    shown: dict[str, Any] = {}
    for key, v in value.metadata().items():
        if key.endswith("uri") and isinstance(v, str):
            shown[key] = dg.MetadataValue.path(v)
        elif isinstance(v, dict):
            shown[key] = dg.MetadataValue.json(v)
        else:
            shown[key] = v
    return shown
