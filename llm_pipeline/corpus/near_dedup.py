"""Near-duplicate detection: MinHash over word 5-grams, LSH banding, verified on collision.

Words are runs of non-whitespace bytes (ASCII whitespace), the same split as `str.split()` for
ordinary text. Shingle hashes are computed for a whole batch of documents at once with numpy (a
polynomial prefix hash per word, then a mix of k consecutive word hashes); `rensa` (Rust) turns the
flat shingle hashes into MinHash signatures. rensa on Python shingle strings, and datasketch, are
slower on the same documents: benchmarks/corpus_bench.py measures all three.
"""

from __future__ import annotations

import numpy as np
from rensa import RMinHash

NUM_PERM = 64
BANDS = 8  # 8 bands x 8 rows: pairs above ~0.77 estimated Jaccard almost always share a band
ROWS = NUM_PERM // BANDS
SHINGLE = 5
SEED = 0x5EED

_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_P = 0x100000001B3
_P_INVERSE = pow(_P, -1, 1 << 64)  # P is odd, so it has an inverse modulo 2**64
_MIX = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x94D049BB133111EB,
        0xBF58476D1CE4E5B9,
    ],
    dtype=np.uint64,
)
_BAND_MIX = _MIX[:ROWS]


class Powers:
    """P**i and P**-i mod 2**64 for i up to the longest document seen, grown on demand."""

    up = np.ones(1, dtype=np.uint64)
    down = np.ones(1, dtype=np.uint64)

    @classmethod
    def upto(cls, n: int) -> tuple[np.ndarray, np.ndarray]:
        if cls.up.size <= n:
            size = max(n + 1, 2 * cls.up.size)
            cls.up, cls.down = cls._table(_P, size), cls._table(_P_INVERSE, size)
        return cls.up, cls.down

    @staticmethod
    def _table(base: int, size: int) -> np.ndarray:
        table = np.full(size, base, dtype=np.uint64)
        table[0] = 1
        with np.errstate(over="ignore"):
            return np.cumprod(table, dtype=np.uint64)


def document_signatures(texts: list[str], k: int = SHINGLE) -> np.ndarray:
    """MinHash signatures of word k-gram sets, one uint32 row of NUM_PERM values per document.

    Whole batches at once: the documents are joined with a newline, words and k-grams are hashed over
    the joined bytes, and k-grams that would straddle two documents are left out. A document with
    fewer than k words has one shingle, all its words. Repeated shingles need no removal: a minimum
    does not change when a value repeats.
    """
    if not texts:
        return np.zeros((0, NUM_PERM), dtype=np.uint32)
    out, batch, size = [], [], 0
    for text in texts:
        encoded = text.encode("utf-8", "surrogatepass")
        batch.append(encoded)
        size += len(encoded) + 1
        if size >= _BATCH_BYTES:
            out.append(_signatures(batch, k))
            batch, size = [], 0
    if batch:
        out.append(_signatures(batch, k))
    return np.concatenate(out)


# Bounds the power tables and temporaries (~100 bytes per input byte) and keeps them in cache:
# measured 39 MB/s at 256 KB against 17 MB/s at 4 MB batches.
_BATCH_BYTES = 256 * 1024


def _signatures(encoded: list[bytes], k: int) -> np.ndarray:
    data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    doc_starts = np.zeros(len(encoded), dtype=np.int64)
    np.cumsum([len(e) + 1 for e in encoded[:-1]], out=doc_starts[1:])
    word = np.zeros(data.size + 2, dtype=np.int8)
    word[1:-1] = ~_WHITESPACE[data]
    edges = np.diff(word)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    doc_of_word = np.searchsorted(doc_starts, starts, side="right") - 1
    words_per_doc = np.bincount(doc_of_word, minlength=len(encoded))
    n = data.size
    powers, inverse = Powers.upto(n)
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[:n], out=prefix[1:])
        # the word's polynomial hash times P**start; times P**-start, equal words hash equally anywhere
        words = (prefix[ends] - prefix[starts]) * inverse[starts]
        words ^= words >> np.uint64(29)
        words *= np.uint64(0xBF58476D1CE4E5B9)
        words ^= words >> np.uint64(32)
        count = max(words.size - k + 1, 0)
        grams = words[:count] * _MIX[0]
        for j in range(1, k):
            grams += words[j : j + count] * _MIX[j]
        grams ^= grams >> np.uint64(31)
    inside = doc_of_word[:count] == doc_of_word[k - 1 : k - 1 + count]
    grams, gram_doc = grams[inside], doc_of_word[:count][inside]
    per_doc = np.bincount(gram_doc, minlength=len(encoded))
    short = np.flatnonzero(per_doc == 0)
    if short.size:  # fewer than k words (or none): one shingle of all the document's words
        first_word = np.concatenate([[0], np.cumsum(words_per_doc)[:-1]])
        with np.errstate(over="ignore"):
            extra = np.array(
                [
                    np.sum(words[first_word[d] : first_word[d] + words_per_doc[d]] * _MIX[: words_per_doc[d]], dtype=np.uint64)
                    for d in short
                ],
                dtype=np.uint64,
            )
        grams = np.concatenate([grams, extra])
        gram_doc = np.concatenate([gram_doc, short])
        order = np.argsort(gram_doc, kind="stable")
        grams, per_doc = grams[order], np.bincount(gram_doc, minlength=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.uint64)
    np.cumsum(per_doc, out=offsets[1:])
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(grams, offsets, NUM_PERM, SEED)
    return np.asarray(matrix.to_rows(), dtype=np.uint32)


def band_keys(sigs: np.ndarray) -> np.ndarray:
    """One 64-bit key per (document, band): rows x BANDS, the band index mixed in."""
    bands = sigs.astype(np.uint64).reshape(len(sigs), BANDS, ROWS)
    with np.errstate(over="ignore"):
        keys = (bands * _BAND_MIX).sum(axis=2, dtype=np.uint64)
        keys ^= np.arange(BANDS, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        keys ^= keys >> np.uint64(33)
    return keys
