"""Corpus batches as partitions, in one process: each batch cleaned and tokenized once, dedup across
batches, junk failing only its own batch, training over every batch, one tokenizer, warm starts.

The daemon-driven version of the same flow (files dropped into the default landing folder) is in
test_continuous_daemon.py."""

import os

import dagster as dg
import pytest

from llm_pipeline.assets.partitions import corpus_batches
from llm_pipeline.automation import new_corpus_sensor, retraining_sensor
from llm_pipeline.definitions import ASSETS, CHECKS, make_resources
from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.conftest import SAMPLE_FILES, _STDLIB
from llm_pipeline_tests.helpers import batch_instance

pytestmark = pytest.mark.e2e
DATA = ["raw_corpus", "tokenizer", "tokenized_shards"]
TRAIN = {"preset": "tiny", "seq_len": 32, "micro_batch": 4, "steps": 4, "warmup_steps": 1, "checkpoint_every": 4,
         "log_every": 2, "dtype": "fp32", "launcher": "none", "nproc": 1}
CONFIG = {"tokenizer": {"vocab_size": 300}, "tokenized_shards": {"val_fraction": 0.3}, "trained_checkpoint": TRAIN,
          "eval_metrics": {"max_loss": 100.0, "max_new_tokens": 4, "max_tokens": 2000}}


def _config(selection, **overrides) -> dict:
    ops = {stage: {"config": dict(values)} for stage, values in CONFIG.items() if stage in selection}
    for stage, values in overrides.items():
        ops.setdefault(stage, {"config": {}})["config"].update(values)
    return {"ops": ops}


class Landing:
    """The landing folder plus the real sensor; its partition requests are applied as the daemon does."""

    def __init__(self, tmp_path, instance, root_uri: str | None = None):
        self.resources = make_resources(root_uri or str(tmp_path / "root"))
        self.folder = self.resources["storage"].root().child("landing")  # the default landing folder
        self.instance, self.cursor = instance, None

    def deliver(self, files: dict[str, str]) -> str:
        for rel, text in files.items():
            self.folder.write_bytes(rel, text.encode("utf-8"))
        keys = []
        for _ in range(2):  # a file is taken once it is unchanged over two ticks
            result = new_corpus_sensor.evaluate_tick(dg.build_sensor_context(
                cursor=self.cursor, resources={k: self.resources[k] for k in ("storage", "automation")}))
            self.cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(corpus_batches.name, list(request.partition_keys))
                keys += request.partition_keys
        [key] = keys
        return key

    def materialize(self, selection, batch=None, **overrides):
        return dg.materialize(ASSETS + CHECKS, selection=selection, resources=self.resources, instance=self.instance,
                              partition_key=batch, run_config=_config(selection, **overrides), raise_on_error=False)


def _texts() -> dict[str, str]:
    texts = {}
    for name in SAMPLE_FILES:
        with open(os.path.join(_STDLIB, name), encoding="utf-8") as f:
            texts[name.replace("/", "_")] = f.read()
    return texts


def _manifest(result, asset: str) -> dict:
    [mat] = result.asset_materializations_for_node(asset)
    return Storage(mat.metadata["uri"].value).read_json("manifest.json")


def _runs(instance, asset: str, batch: str) -> list[str]:
    """The runs that materialized this batch of `asset`, newest first."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[batch]), limit=100).records
    return [r.run_id for r in records]


def test_batches_are_processed_once_deduplicated_across_and_trained_on_together(tmp_path):
    instance = batch_instance(home=str(tmp_path / "home"))
    landing = Landing(tmp_path, instance)
    texts = _texts()
    names = sorted(texts)
    first = landing.deliver({f"delivery-1/{n}": texts[n] for n in names[:8]})
    result = landing.materialize(DATA, first)
    assert result.success
    assert _manifest(result, "raw_corpus")["documents"] == 8

    # Batch 2: four new documents, an exact copy and a near copy of batch-1 documents.
    near = texts[names[0]].replace("def ", "def  ", 3)
    second = landing.deliver({**{f"delivery-2/{n}": texts[n] for n in names[8:]},
                              "delivery-2/copy.py": texts[names[1]], "delivery-2/near.py": near})
    result = landing.materialize(["raw_corpus", "tokenized_shards"], second)
    assert result.success
    manifest = _manifest(result, "raw_corpus")
    assert manifest["documents"] == 4 and manifest["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert manifest["duplicates_of_earlier_batches"] == 2
    assert f"of earlier batch {first}" in manifest["dropped_examples"]["exact_duplicate"]

    # Batch 3 repeats batch 1: nothing new, kept as an empty batch, not a failure.
    repeat = landing.deliver({f"delivery-3/{n}": texts[n] for n in names[2:5]})
    result = landing.materialize(["raw_corpus", "tokenized_shards"], repeat)
    assert result.success
    assert _manifest(result, "raw_corpus")["documents"] == 0
    assert _manifest(result, "tokenized_shards")["splits"]["train"]["tokens"] == 0

    # Batch 4 is all junk: it fails, naming its quarantine, and leaves the other batches alone.
    before = {b: _runs(instance, "raw_corpus", b) for b in (first, second)}
    junk = landing.deliver({"delivery-4/a.txt": "x", "delivery-4/b.txt": "\x00\x01" * 100})
    result = landing.materialize(["raw_corpus"], junk)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.event_specific_data.error.message
    assert f"raw_corpus[{junk}]" in message and "no document kept" in message and "see the quarantine files under" in message
    quarantine = message.rsplit("see the quarantine files under ", 1)[1].strip()
    assert any(n.startswith("quarantine-") for n in Storage(quarantine).listdir())
    assert {b: _runs(instance, "raw_corpus", b) for b in (first, second)} == before

    # Each batch was cleaned and tokenized exactly once.
    for asset in ("raw_corpus", "tokenized_shards"):
        assert [len(_runs(instance, asset, b)) for b in (first, second, repeat, junk)] == [1, 1, 1, 0]

    # New tokens ask for a retraining; training reads every batch with training tokens (the empty
    # repeat adds none), and says which.
    def retraining_tick():
        return retraining_sensor.evaluate_tick(dg.build_sensor_context(
            instance=instance, resources={"automation": landing.resources["automation"]}))

    [request] = retraining_tick().run_requests
    assert request.tags["llm_pipeline/new_batches"] == f"{first},{second},{repeat}"
    # One training at a time: while a training run is queued or running, new data waits for the next.
    running = instance.add_run(dg.DagsterRun(job_name="training_job", run_id="running-training-run", status=dg.DagsterRunStatus.STARTED))
    assert retraining_tick().skip_message.endswith(f"wait for training run {running.run_id} to finish")
    instance.report_run_canceled(running)
    result = landing.materialize(["trained_checkpoint", "eval_metrics", "published_model"])
    assert result.success
    ckpt = result.output_for_node("trained_checkpoint")
    assert [d.batch for d in ckpt.data] == [first, second]
    assert ckpt.train_config["shards_uris"] == [d.uri for d in ckpt.data]
    card = Storage(result.output_for_node("published_model").uri).read_bytes("README.md").decode()
    assert f"batch {first}" in card and f"batch {second}" in card
    assert retraining_tick().skip_message.startswith("0 new training tokens")
    # A batch tokenized again with the same tokenizer gives the same shards: still nothing new.
    assert landing.materialize(["tokenized_shards"], second).success
    assert retraining_tick().skip_message.startswith("0 new training tokens")

    # Continued pretraining from the published model starts where it left off (a lower first loss).
    warm = landing.materialize(["trained_checkpoint"], trained_checkpoint={"init_from": "latest_published"})
    assert warm.success
    warm_ckpt = warm.output_for_node("trained_checkpoint")
    assert warm_ckpt.init_from == result.output_for_node("published_model").uri
    assert warm_ckpt.run_uri != ckpt.run_uri  # another start: another run key
    first_loss = lambda c: Storage(c.final_uri).read_json("summary.json")["losses"][0][1]  # noqa: E731
    assert first_loss(warm_ckpt) < first_loss(ckpt) - 0.5

    # A selection of batches is honoured; an unknown one is refused by name.
    only = landing.materialize(["trained_checkpoint"], trained_checkpoint={"batches": [second]})
    assert only.success and [d.batch for d in only.output_for_node("trained_checkpoint").data] == [second]
    unknown = landing.materialize(["trained_checkpoint"], trained_checkpoint={"batches": ["nope"]})
    failure = next(e for e in unknown.all_events if e.event_type_value == "STEP_FAILURE")
    assert "batches nope have no tokenized_shards" in failure.event_specific_data.error.message

    # A mixture: each batch's share of the samples by weight; the realized mix in the metadata and the card.
    mixed = landing.materialize(["trained_checkpoint", "eval_metrics", "published_model"],
                                trained_checkpoint={"mixture": {first: 1.0, second: 3.0}})
    assert mixed.success
    mixed_ckpt = mixed.output_for_node("trained_checkpoint")
    assert mixed_ckpt.train_config["shard_sources"] == [first, second]
    realized = Storage(mixed_ckpt.final_uri).read_json("summary.json")["mixture"]
    assert [realized[b]["weight"] for b in (first, second)] == [0.25, 0.75]
    assert sum(m["samples"] for m in realized.values()) == 4 * 4  # steps x micro_batch: every sample from a source
    [mat] = mixed.asset_materializations_for_node("trained_checkpoint")
    assert mat.metadata["mixture"].value == realized
    assert mat.metadata[f"mixture/{second}/share"].value == pytest.approx(realized[second]["share"], rel=1e-3)
    card = Storage(mixed.output_for_node("published_model").uri).read_bytes("README.md").decode()
    assert "### Training data mixture" in card
    assert f"| {second} | 75.0% | {realized[second]['share']:.1%} | {realized[second]['samples']:,} |" in card
    unmatched = landing.materialize(["trained_checkpoint"], trained_checkpoint={"mixture": {"web-*": 1.0}})
    failure = next(e for e in unmatched.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"corpus batches {first}, {second} match no mixture source (web-*)" in failure.event_specific_data.error.message

    # A new tokenizer re-tokenizes every batch that has a corpus (the automation's own evaluation,
    # as the daemon runs it).
    defs = dg.Definitions(assets=ASSETS, resources=landing.resources)
    cursor = dg.evaluate_automation_conditions(defs, instance).cursor
    assert landing.materialize(["tokenizer"], tokenizer={"vocab_size": 320}).success
    changed = dg.evaluate_automation_conditions(defs, instance, cursor=cursor)
    assert changed.get_requested_partitions(dg.AssetKey("tokenized_shards")) == {first, second, repeat}

    # Until the batches are re-tokenized, training refuses the mix, naming them.
    refused = landing.materialize(["trained_checkpoint"])
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    assert "mixed tokenizers" in failure.event_specific_data.error.message
    assert first in failure.event_specific_data.error.message and second in failure.event_specific_data.error.message
    # Nor is the last model evaluated or published with a tokenizer it was not trained with.
    for stage in ("eval_metrics", "published_model"):
        stale = landing.materialize([stage])
        failure = next(e for e in stale.all_events if e.event_type_value == "STEP_FAILURE")
        assert "was trained with tokenizer" in failure.event_specific_data.error.message, stage


def test_landing_to_published_model_on_gcs(gcs_bucket, tmp_path):
    """The storage root, and so the landing folder, on gs:// (a real GCS API server through gcsfs):
    a delivery lands as a batch, is cleaned and tokenized, trained on by the trainer's own process,
    evaluated and published; transformers loads the published folder back from the bucket."""
    from llm_pipeline.publish.generate import generate
    from llm_pipeline.publish.verify import verify

    instance = batch_instance(home=str(tmp_path / "home"))
    landing = Landing(tmp_path, instance, root_uri=f"gs://{gcs_bucket}/continuous")
    texts = _texts()
    batch = landing.deliver({f"delivery-1/{n}": texts[n] for n in sorted(texts)})
    data = landing.materialize(DATA, batch)
    assert data.success
    assert _manifest(data, "raw_corpus")["documents"] == len(texts)
    assert _manifest(data, "tokenized_shards")["splits"]["train"]["tokens"] > 0
    result = landing.materialize(["trained_checkpoint", "eval_metrics", "published_model"])
    assert result.success
    published = result.output_for_node("published_model")
    assert published.uri.startswith(f"gs://{gcs_bucket}/continuous/registry/")
    storage = landing.resources["storage"]
    assert verify(storage.at(published.uri)) == []
    trained = result.output_for_node("trained_checkpoint")
    assert trained.run_uri.startswith(f"gs://{gcs_bucket}/") and [d.batch for d in trained.data] == [batch]
    assert isinstance(generate(published.uri, "def ", max_new_tokens=4), str)
