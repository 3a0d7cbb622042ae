"""The stage values through the real IO manager: typed on the way in, every batch in landing order."""

import math

import dagster as dg

from llm_pipeline.contracts import CorpusRef, EvalReport, ShardSetRef
from llm_pipeline.resources import JsonIOManager, StorageResource
from llm_pipeline_tests.helpers import eval_report

batches = dg.DynamicPartitionsDefinition(name="batches")


@dg.asset(partitions_def=batches)
def corpus(context: dg.AssetExecutionContext) -> CorpusRef:
    return CorpusRef(
        uri=f"mem://{context.partition_key}",
        batch=context.partition_key,
        manifest_sha256="0" * 64,
        documents=len(context.partition_key),
        text_bytes=1,
    )


@dg.asset(ins={"corpus": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def every_batch(corpus: dict[str, CorpusRef]) -> list[str]:
    assert all(isinstance(v, CorpusRef) for v in corpus.values())
    return list(corpus)


@dg.asset
def report() -> EvalReport:
    return eval_report({"loss": float("inf"), "perplexity": float("inf")})


@dg.asset
def gate(report: EvalReport) -> float:
    return report.perplexity


def test_an_input_of_every_batch_gets_the_materialized_ones_typed_in_landing_order(tmp_path):
    resources = {"io_manager": JsonIOManager(storage=StorageResource(root_uri=str(tmp_path)))}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("batches", ["zeta", "alpha", "mu"])  # landing order, not sorted
    for key in ("mu", "zeta"):  # alpha never materialized (a failed batch)
        assert dg.materialize([corpus], partition_key=key, instance=instance, resources=resources).success
    result = dg.materialize([corpus, every_batch], selection=["every_batch"], instance=instance, resources=resources)
    assert result.output_for_node("every_batch") == ["zeta", "mu"]


def test_a_diverged_evaluation_round_trips_with_its_infinite_numbers(tmp_path):
    resources = {"io_manager": JsonIOManager(storage=StorageResource(root_uri=str(tmp_path)))}
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([report], instance=instance, resources=resources).success
    result = dg.materialize([report, gate], selection=["gate"], instance=instance, resources=resources)
    assert math.isinf(result.output_for_node("gate"))


def test_the_sensors_read_back_what_the_metadata_declares():
    shards = ShardSetRef(
        uri="s3://b/shards",
        batch="b1",
        manifest_sha256="a" * 64,
        tokenizer_sha256="c" * 64,
        train_tokens=10,
        val_tokens=2,
        corpus_uri="s3://b/corpus",
        corpus_manifest_sha256="d" * 64,
    )
    assert ShardSetRef.from_metadata(shards.metadata()) == shards
