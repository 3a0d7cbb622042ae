"""A Hugging Face-format model folder in a versioned registry under the storage root.

`<registry>/<name>/<version>/` holds config.json (LlamaForCausalLM), model.safetensors,
tokenizer.json + tokenizer_config.json + special_tokens_map.json, generation_config.json, a model
card README.md and manifest.json (a sha256 for every file, written last in the folder). The
`<registry>/<name>/latest` pointer is written after the whole version exists, so a reader who
follows it never sees a half-published model. Versions are never overwritten.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping

from fsspec.implementations.local import LocalFileSystem

from llm_pipeline.evaluate.local_tasks import CHOICES, CONTINUATION_TASK
from llm_pipeline.evaluate.results import ContaminationReport, HarnessResult
from llm_pipeline.publish.manifest import FileHash, ModelManifest
from llm_pipeline.publish.registry import point_latest
from llm_pipeline.storage.folders import Storage, sha256_file
from llm_pipeline.storage.manifests import write_manifest
from llm_pipeline.storage.names import check_name
from llm_pipeline.train.hf_folder import hf_files
from llm_pipeline.train.model_config import ModelConfig
from llm_pipeline.train.summary import SourceMix


def new_version(now: dt.datetime | None = None) -> str:
    """Sortable and unique per publish: UTC time to the microsecond plus a random suffix."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("v%Y%m%d-%H%M%S-%f") + "-" + os.urandom(3).hex()


def model_card(
    name: str,
    version: str,
    metrics: Mapping[str, object],
    lineage: Mapping[str, object],
    training: Mapping[str, object],
    harness: HarnessResult | None = None,
    contamination: ContaminationReport | None = None,
    mixture: Mapping[str, SourceMix] | None = None,
) -> str:
    """README.md: the evaluation, lineage, data mixture and training settings (`training`: shown as JSON)."""
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    lineage_rows = "\n".join(f"- **{k}**: `{v}`" for k, v in lineage.items())
    training_json = json.dumps(training, indent=2, sort_keys=True)
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [llm-pipeline, llama]
---
# {name} {version}

A Llama-architecture causal language model trained by llm-pipeline with DeepSpeed ZeRO.

## Evaluation (held-out split)
| metric | value |
|---|---|
{rows}
{_harness_section(harness)}{_contamination_section(contamination)}
## Data and lineage
{lineage_rows}
{_mixture_section(mixture or {})}
## Training configuration
```json
{training_json}
```

## Use
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
"""


def _harness_section(harness: HarnessResult | None) -> str:
    """The lm-evaluation-harness scores, as a markdown table."""
    if not harness or not harness.results:
        return ""
    rows = "\n".join(f"| {task} | {metric} | {v.value:.4f} | {_stderr(v.stderr)} |" for task, metric, v in harness.scores())
    chance = (
        f"\n`{CONTINUATION_TASK}`: a held-out passage and {CHOICES} continuations, chance {1 / CHOICES:.2f}.\n"
        if CONTINUATION_TASK in harness.results
        else ""
    )
    return f"""
## lm-evaluation-harness {harness.lm_eval_version}
| task | metric | value | stderr |
|---|---|---|---|
{rows}
{chance}"""


def _contamination_section(report: ContaminationReport | None) -> str:
    """The contamination report, as a markdown table."""
    if not report:
        return ""
    rows = "\n".join(
        f"| {name} | {r.documents} | {r.sharing_fraction:.1%} | {r.fraction:.1%} | {r.mean_overlap:.1%} |"
        for name, r in report.sets.items()
    )
    return f"""
## Contamination ({report.n}-grams of token ids shared with the training split)
| eval set | documents | share any {report.n}-gram | contaminated (>= {report.min_overlap:.0%} of n-grams) | mean overlap |
|---|---|---|---|---|
{rows}
"""


def _mixture_section(mixture: Mapping[str, SourceMix]) -> str:
    """The training samples' realized mix per source (the configured weight next to it)."""
    if not mixture:
        return ""
    rows = "\n".join(
        f"| {name} | {m.weight:.1%} | {m.share:.1%} | {m.samples:,} | {m.tokens:,} | {m.epochs:.2f} |" for name, m in mixture.items()
    )
    return f"""
### Training data mixture
| source | weight | realized share | samples | tokens | epochs |
|---|---|---|---|---|---|
{rows}
"""


def _stderr(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def publish(
    registry: Storage,
    name: str,
    final: Storage,
    tokenizer_json: str,
    eos_id: int,
    metrics: Mapping[str, float | int],
    lineage: Mapping[str, str | int],
    training: Mapping[str, object],
    harness: HarnessResult | None = None,
    contamination: ContaminationReport | None = None,
    mixture: Mapping[str, SourceMix] | None = None,
) -> ModelManifest:
    """Write a new version and move `latest` to it. Returns the manifest (with the version's URI)."""
    check_name(name, "model_name")
    model_cfg = ModelConfig.from_dict(final.read_json("model_config.json"), f"{final.uri}/model_config.json")
    version = new_version()
    target = registry.child(name, version)
    if target.exists():
        raise FileExistsError(f"model version {target.uri} already exists")
    files = hf_files(model_cfg, tokenizer_json, eos_id)
    files["README.md"] = model_card(name, version, metrics, lineage, training, harness, contamination, mixture).encode("utf-8")
    hashes = {}
    for file_name, data in files.items():
        target.write_bytes(file_name, data)
        hashes[file_name] = FileHash(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "model.safetensors")
        final.get_file("model.safetensors", weights)
        target.put_file(weights, "model.safetensors")
        hashes["model.safetensors"] = FileHash(sha256=sha256_file(LocalFileSystem(), weights), bytes=os.path.getsize(weights))
    manifest = ModelManifest(
        name=name,
        version=version,
        uri=target.uri,
        files=dict(sorted(hashes.items())),
        metrics=dict(metrics),
        lineage=dict(lineage),
        published_at=dt.datetime.now(dt.UTC).isoformat(),
    )
    write_manifest(target, manifest.model_dump(mode="json"))
    point_latest(registry.child(name), version)  # last
    return manifest
