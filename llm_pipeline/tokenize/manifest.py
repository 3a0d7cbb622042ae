"""A shard set's manifest.json: one definition for the writer (tokenize/shards.py) and every reader
(the trainer's data and token store, the evaluation, the asset's metadata).

Stored as JSON, written last (storage/manifests.py); train/data.py read_shard_manifest reads it back
through the model after its own checks of every field it relies on, so a renamed field fails `mypy`
where it is read, and a file that lacks one fails by name.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

Split = Literal["train", "val"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenShard(Record):
    """One Parquet shard of token rows (a document per row, EOS last)."""

    name: str
    split: Split
    documents: int
    tokens: int
    max_id: int = 0  # the largest id it holds; written by every release that reads it
    bytes: int
    sha256: str


class FlatFile(Record):
    name: str
    count: int
    sha256: str


class FlatTokens(FlatFile):
    bytes: int
    max_id: int


class FlatSplit(Record):
    """A split as one memory-mappable array of ids (`tokens`) and its documents' end offsets (`docs`)."""

    tokens: FlatTokens
    docs: FlatFile
    dtype: str


class SplitTotals(Record):
    documents: int
    tokens: int
    text_bytes: int


class SplitRule(Record):
    hash: str  # how a document id picks its split
    val_fraction: float


class DroppedCounts(Record):
    documents: int
    tokens: int
    text_bytes: int


class ShardDecontamination(Record):
    """Training documents left out because they would contaminate the set's own validation split."""

    n: int
    min_overlap: float
    dropped_as_eval_overlap: DroppedCounts


class ShardManifest(Record):
    kind: Literal["tokenized_shards"] = "tokenized_shards"
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    dtype: str  # of the ids: uint16 or uint32
    encoder_engine: str
    split_rule: SplitRule
    decontamination: Optional[ShardDecontamination]
    tokens_per_shard: int
    row_group_rows: int
    splits: dict[Split, SplitTotals]
    shards: tuple[TokenShard, ...]  # train's, then val's
    flat: dict[Split, FlatSplit] = {}  # absent in sets written before flat files: converted on first use

    def split_shards(self, split: str) -> list[TokenShard]:
        return [s for s in self.shards if s.split == split]

    def dropped_as_eval_overlap(self) -> int:
        return self.decontamination.dropped_as_eval_overlap.documents if self.decontamination else 0
