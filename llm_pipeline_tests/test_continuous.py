"""Corpus batches as partitions, in one process: each batch cleaned and tokenized once, dedup across
batches, junk failing only its own batch, training over every batch, one tokenizer, warm starts.

The daemon-driven version of the same flow (files dropped into the default landing folder) is in
test_continuous_daemon.py."""

import os
from types import SimpleNamespace

import dagster as dg
import pytest

from llm_pipeline.assets.partitions import corpus_batches
from llm_pipeline.automation import new_corpus_sensor, retraining_sensor
from llm_pipeline.definitions import ASSETS, CHECKS, make_resources
from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.conftest import _STDLIB, SAMPLE_FILES
from llm_pipeline_tests.helpers import TINY_TRAINING, batch_instance, step_failure

pytestmark = pytest.mark.e2e
DATA = ["raw_corpus", "tokenizer", "tokenized_shards"]
TRAIN = TINY_TRAINING
CONFIG = {
    "tokenizer": {"vocab_size": 300},
    "tokenized_shards": {"val_fraction": 0.3},
    "trained_checkpoint": TRAIN,
    "eval_metrics": {"max_loss": 100.0, "max_new_tokens": 4, "max_tokens": 2000},
}


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
            result = new_corpus_sensor.evaluate_tick(
                dg.build_sensor_context(cursor=self.cursor, resources={k: self.resources[k] for k in ("storage", "automation")})
            )
            self.cursor = result.cursor
            for request in result.dynamic_partitions_requests or []:
                self.instance.add_dynamic_partitions(corpus_batches.name, list(request.partition_keys))
                keys += request.partition_keys
        [key] = keys
        return key

    def materialize(self, selection, batch=None, **overrides):
        return dg.materialize(
            ASSETS + CHECKS,
            selection=selection,
            resources=self.resources,
            instance=self.instance,
            partition_key=batch,
            run_config=_config(selection, **overrides),
            raise_on_error=False,
        )


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
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[batch]), limit=100
    ).records
    return [r.run_id for r in records]


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """Four deliveries, each landed as a batch and cleaned (and tokenized) as the daemon would: new
    documents; new ones plus an exact and a near copy of batch-1 documents; a repeat of batch 1;
    junk. What each step gave is kept for the tests below."""
    tmp_path = tmp_path_factory.mktemp("continuous")
    instance = batch_instance(home=str(tmp_path / "home"))
    landing = Landing(tmp_path, instance)
    texts = _texts()
    names = sorted(texts)
    first = landing.deliver({f"delivery-1/{n}": texts[n] for n in names[:8]})
    first_result = landing.materialize(DATA, first)
    near = texts[names[0]].replace("def ", "def  ", 3)
    second = landing.deliver(
        {**{f"delivery-2/{n}": texts[n] for n in names[8:]}, "delivery-2/copy.py": texts[names[1]], "delivery-2/near.py": near}
    )
    second_result = landing.materialize(["raw_corpus", "tokenized_shards"], second)
    repeat = landing.deliver({f"delivery-3/{n}": texts[n] for n in names[2:5]})
    repeat_result = landing.materialize(["raw_corpus", "tokenized_shards"], repeat)
    runs_before_junk = {b: _runs(instance, "raw_corpus", b) for b in (first, second)}
    junk = landing.deliver({"delivery-4/a.txt": "x", "delivery-4/b.txt": "\x00\x01" * 100})
    junk_result = landing.materialize(["raw_corpus"], junk)
    runs = {asset: [len(_runs(instance, asset, b)) for b in (first, second, repeat, junk)] for asset in ("raw_corpus", "tokenized_shards")}
    return SimpleNamespace(
        instance=instance,
        landing=landing,
        first=first,
        second=second,
        repeat=repeat,
        junk=junk,
        first_result=first_result,
        second_result=second_result,
        repeat_result=repeat_result,
        junk_result=junk_result,
        runs_before_junk=runs_before_junk,
        runs=runs,
    )


def _retraining_tick(landed):
    return retraining_sensor.evaluate_tick(
        dg.build_sensor_context(instance=landed.instance, resources={"automation": landed.landing.resources["automation"]})
    )


@pytest.fixture(scope="module")
def trained(landed):
    """The retraining sensor's answers before and after the first training (trained, evaluated and
    published on every batch), and after a batch is tokenized again with the same tokenizer."""
    request = _retraining_tick(landed).run_requests
    # One training at a time: while a training run is queued or running, new data waits for the next.
    running = landed.instance.add_run(
        dg.DagsterRun(job_name="training_job", run_id="running-training-run", status=dg.DagsterRunStatus.STARTED)
    )
    while_running = _retraining_tick(landed).skip_message
    landed.instance.report_run_canceled(running)
    result = landed.landing.materialize(["trained_checkpoint", "eval_metrics", "published_model"])
    after = _retraining_tick(landed).skip_message
    tokenized_again = landed.landing.materialize(["tokenized_shards"], landed.second)
    after_tokenized_again = _retraining_tick(landed).skip_message
    return SimpleNamespace(
        request=request,
        while_running=while_running,
        result=result,
        after=after,
        tokenized_again=tokenized_again,
        after_tokenized_again=after_tokenized_again,
    )


def test_each_batch_is_cleaned_and_tokenized_exactly_once(landed):
    assert landed.first_result.success and landed.second_result.success and landed.repeat_result.success
    assert _manifest(landed.first_result, "raw_corpus")["documents"] == 8
    assert landed.runs == {"raw_corpus": [1, 1, 1, 0], "tokenized_shards": [1, 1, 1, 0]}


def test_copies_of_an_earlier_batchs_documents_are_dropped(landed):
    manifest = _manifest(landed.second_result, "raw_corpus")
    # keyword.py says in its first lines that it is generated: the code preset drops it
    assert manifest["documents"] == 3 and manifest["dropped"] == {"code_quality": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert manifest["dropped_examples"]["code_quality"].endswith("keyword.py: generated")
    assert manifest["duplicates_of_earlier_batches"] == 2
    assert f"of earlier batch {landed.first}" in manifest["dropped_examples"]["exact_duplicate"]
    # the dedup index, as the UI shows it: every batch's kept documents so far, and its bytes on storage
    [mat] = landed.second_result.asset_materializations_for_node("raw_corpus")
    first_index = _manifest(landed.first_result, "raw_corpus")["dedup_index"]["segment"]
    assert mat.metadata["dedup_index_documents"].value == 8 + 3
    assert mat.metadata["dedup_index_bytes"].value == first_index["bytes"] + manifest["dedup_index"]["segment"]["bytes"]
    segment = Storage(mat.metadata["uri"].value).child("dedup")
    assert sum(segment.size(name) for name in segment.listdir() if name.endswith(".npy")) == manifest["dedup_index"]["segment"]["bytes"]
    assert mat.metadata["dedup_lookup_seconds"].value >= 0


def test_a_batch_whose_drop_shares_moved_is_warned_about(landed):
    first = {c.check_name: c for c in landed.first_result.get_asset_check_evaluations()}["drop_shares_steady"]
    second = {c.check_name: c for c in landed.second_result.get_asset_check_evaluations()}["drop_shares_steady"]
    assert first.passed and first.description == "no earlier batch to compare with"
    assert not second.passed and second.severity == dg.AssetCheckSeverity.WARN
    assert f"since batch {landed.first}" in second.description
    assert "exact_duplicate: 0.0% -> 16.7% of records" in second.description and "near_duplicate" in second.description


def test_a_batch_repeating_an_earlier_one_is_kept_empty_not_failed(landed):
    assert _manifest(landed.repeat_result, "raw_corpus")["documents"] == 0
    assert _manifest(landed.repeat_result, "tokenized_shards")["splits"]["train"]["tokens"] == 0


def test_a_batch_of_junk_fails_alone_naming_its_quarantine(landed):
    assert not landed.junk_result.success
    message = step_failure(landed.junk_result)[1]
    assert f"raw_corpus[{landed.junk}]" in message and "no document kept" in message and "see the quarantine files under" in message
    quarantine = message.rsplit("see the quarantine files under ", 1)[1].strip()
    assert any(n.startswith("quarantine-") for n in Storage(quarantine).listdir())
    assert {b: _runs(landed.instance, "raw_corpus", b) for b in (landed.first, landed.second)} == landed.runs_before_junk


def test_new_tokens_ask_for_one_retraining_at_a_time(landed, trained):
    [request] = trained.request
    assert request.tags["llm_pipeline/new_batches"] == f"{landed.first},{landed.second},{landed.repeat}"
    assert trained.while_running.endswith("wait for training run running-training-run to finish")


def test_training_reads_every_batch_with_training_tokens_and_the_card_names_them(landed, trained):
    # The empty repeat adds no training tokens: it is not read.
    assert trained.result.success
    ckpt = trained.result.output_for_node("trained_checkpoint")
    assert [d.batch for d in ckpt.data] == [landed.first, landed.second]
    assert list(ckpt.train_config.shards_uris) == [d.uri for d in ckpt.data]
    card = Storage(trained.result.output_for_node("published_model").uri).read_bytes("README.md").decode()
    assert f"batch {landed.first}" in card and f"batch {landed.second}" in card


def test_tokens_already_trained_on_ask_for_no_retraining(trained):
    assert trained.after.startswith("0 new training tokens")
    # A batch tokenized again with the same tokenizer gives the same shards: still nothing new.
    assert trained.tokenized_again.success
    assert trained.after_tokenized_again.startswith("0 new training tokens")


def test_continued_pretraining_starts_where_the_published_model_left_off(landed, trained):
    warm = landed.landing.materialize(["trained_checkpoint"], trained_checkpoint={"init_from": "latest_published"})
    assert warm.success
    warm_ckpt, ckpt = warm.output_for_node("trained_checkpoint"), trained.result.output_for_node("trained_checkpoint")
    assert warm_ckpt.init_from == trained.result.output_for_node("published_model").uri
    assert warm_ckpt.run_uri != ckpt.run_uri  # another start: another run key
    first_loss = lambda c: Storage(c.final_uri).read_json("summary.json")["losses"][0][1]  # noqa: E731
    assert first_loss(warm_ckpt) < first_loss(ckpt) - 0.5


def test_a_selection_of_batches_is_honoured_and_an_unknown_one_refused_by_name(landed, trained):
    only = landed.landing.materialize(["trained_checkpoint"], trained_checkpoint={"batches": [landed.second]})
    assert only.success and [d.batch for d in only.output_for_node("trained_checkpoint").data] == [landed.second]
    unknown = landed.landing.materialize(["trained_checkpoint"], trained_checkpoint={"batches": ["nope"]})
    assert "batches nope have no tokenized_shards" in step_failure(unknown)[1]


def test_a_mixture_draws_each_batch_by_weight_and_reports_the_realized_mix(landed, trained):
    first, second = landed.first, landed.second
    mixed = landed.landing.materialize(
        ["trained_checkpoint", "eval_metrics", "published_model"], trained_checkpoint={"mixture": {first: 1.0, second: 3.0}}
    )
    assert mixed.success
    mixed_ckpt = mixed.output_for_node("trained_checkpoint")
    assert list(mixed_ckpt.train_config.shard_sources) == [first, second]
    realized = Storage(mixed_ckpt.final_uri).read_json("summary.json")["mixture"]
    assert [realized[b]["weight"] for b in (first, second)] == [0.25, 0.75]
    assert sum(m["samples"] for m in realized.values()) == 4 * 4  # steps x micro_batch: every sample from a source
    [mat] = mixed.asset_materializations_for_node("trained_checkpoint")
    assert mat.metadata["mixture"].value == realized
    assert mat.metadata[f"mixture/{second}/share"].value == pytest.approx(realized[second]["share"], rel=1e-3)
    card = Storage(mixed.output_for_node("published_model").uri).read_bytes("README.md").decode()
    assert "### Training data mixture" in card
    assert f"| {second} | 75.0% | {realized[second]['share']:.1%} | {realized[second]['samples']:,} |" in card
    unmatched = landed.landing.materialize(["trained_checkpoint"], trained_checkpoint={"mixture": {"web-*": 1.0}})
    assert f"corpus batches {first}, {second} match no mixture source (web-*)" in step_failure(unmatched)[1]


# Last in this module: it replaces the tokenizer every test above trains with.
def test_a_new_tokenizer_retokenizes_every_batch_and_the_stale_stages_refuse(landed, trained):
    first, second, landing = landed.first, landed.second, landed.landing
    # The automation's own evaluation, as the daemon runs it.
    defs = dg.Definitions(assets=ASSETS, resources=landing.resources)
    cursor = dg.evaluate_automation_conditions(defs, landed.instance).cursor
    assert landing.materialize(["tokenizer"], tokenizer={"vocab_size": 320}).success
    changed = dg.evaluate_automation_conditions(defs, landed.instance, cursor=cursor)
    assert changed.get_requested_partitions(dg.AssetKey("tokenized_shards")) == {first, second, landed.repeat}

    # Until the batches are re-tokenized, training refuses the mix, naming them.
    message = step_failure(landing.materialize(["trained_checkpoint"]))[1]
    assert "mixed tokenizers" in message and first in message and second in message
    # Nor is the last model evaluated or published with a tokenizer it was not trained with.
    for stage in ("eval_metrics", "published_model"):
        assert "was trained with tokenizer" in step_failure(landing.materialize([stage]))[1], stage


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
    assert _manifest(data, "raw_corpus")["documents"] == len(texts) - 1  # keyword.py: generated, dropped as such
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
