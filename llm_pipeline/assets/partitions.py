"""Corpus batches as Dagster partitions: one per landed delivery, plus the built-in corpus."""

import dagster as dg

from llm_pipeline.resources import StorageResource, latest_run, value_folder

CORPUS_BATCHES = "corpus_batches"
corpus_batches = dg.DynamicPartitionsDefinition(name=CORPUS_BATCHES)


def batch_keys(instance: dg.DagsterInstance) -> list[str]:
    """Every batch, in the order they were added (landing order)."""
    return list(instance.get_dynamic_partitions(CORPUS_BATCHES))


def partition_values(
    context: dg.AssetExecutionContext, storage: StorageResource, asset: str, keys: list[str] | None = None
) -> dict[str, dict]:
    """The value of each materialized partition of `asset` (all batches, or `keys`), in batch order:
    the one this run wrote where it wrote one, else the latest materialization's. Partitions never
    materialized (a batch that failed, or not processed yet) are left out."""
    asset_key = dg.AssetKey(asset)
    values = {}
    for key in batch_keys(context.instance) if keys is None else keys:
        folder = value_folder(storage, asset_key, key)
        for run_id in (context.run_id, latest_run(context.instance, asset_key, key)):
            if run_id and folder.exists(f"{run_id}.json"):
                values[key] = folder.read_json(f"{run_id}.json")
                break
    return values
