"""Metadata as people read it in the UI: numbers to meaningful digits, lists as tables."""

import math

import dagster as dg


def significant(value: float, digits: int = 5) -> float:
    """3.7504754066467285 -> 3.7505; 8219.074953133586 -> 8219.1. Non-finite values pass through."""
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


def table(rows: list[dict], columns: dict[str, str]) -> dg.MetadataValue:
    """rows of {column: value}; columns maps each column name to its type ("string", "int", "float")."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord({name: row[name] for name in columns}) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()]),
    )
