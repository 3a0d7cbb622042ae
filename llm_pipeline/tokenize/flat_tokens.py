"""A split's tokens as one flat array next to its Parquet shards, for memory-mapping (nanoGPT's `.bin`).

`<split>.tokens`: every document's ids followed by EOS, in shard order, raw little-endian in the
shards' dtype (uint16, or uint32 above 65,536 ids). `<split>.docs`: uint64 end offsets of the
documents in it (the document index). Both are written to a local temporary file while the shards
are encoded (the same rows, so the same tokens as the Parquet rows) and copied in when the split
is done; their sha256 and sizes go into the shard manifest under `flat`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np

from llm_pipeline.storage.folders import Storage
from llm_pipeline.tokenize.manifest import FlatFile, FlatSplit, FlatTokens


class FlatWriter:
    def __init__(self, split: str, dtype: str):
        self.split, self.dtype = split, np.dtype(dtype).newbyteorder("<")
        self._dir = tempfile.TemporaryDirectory(prefix=f"flat-{split}-")
        self._tokens = open(os.path.join(self._dir.name, "tokens"), "wb")
        self._ends: list[int] = []
        self._count, self._max_id = 0, 0
        self._digest = hashlib.sha256()

    def add(self, ids: np.ndarray) -> None:
        data = ids.astype(self.dtype, copy=False).tobytes()
        self._tokens.write(data)
        self._digest.update(data)
        self._count += len(ids)
        self._ends.append(self._count)
        if len(ids):
            self._max_id = max(self._max_id, int(ids.max()))

    def finish(self, out: Storage) -> FlatSplit:
        """Copy both files into `out`; returns the manifest entry of the split."""
        self._tokens.close()
        docs = np.asarray(self._ends, dtype="<u8").tobytes()
        try:
            out.put_file(self._tokens.name, f"{self.split}.tokens")
            out.write_bytes(f"{self.split}.docs", docs)
        finally:
            self._dir.cleanup()
        return FlatSplit(
            tokens=FlatTokens(
                name=f"{self.split}.tokens",
                count=self._count,
                bytes=self._count * self.dtype.itemsize,
                sha256=self._digest.hexdigest(),
                max_id=self._max_id,
            ),
            docs=FlatFile(name=f"{self.split}.docs", count=len(self._ends), sha256=hashlib.sha256(docs).hexdigest()),
            dtype=self.dtype.name,
        )

    def abort(self) -> None:
        self._tokens.close()
        self._dir.cleanup()
