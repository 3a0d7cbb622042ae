"""Corpus batches as Dagster partitions: one per landed delivery, plus the built-in corpus."""

import dagster as dg

CORPUS_BATCHES = "corpus_batches"
corpus_batches = dg.DynamicPartitionsDefinition(name=CORPUS_BATCHES)


def batch_keys(instance: dg.DagsterInstance) -> list[str]:
    """Every batch, in the order they were added (landing order)."""
    return list(instance.get_dynamic_partitions(CORPUS_BATCHES))
