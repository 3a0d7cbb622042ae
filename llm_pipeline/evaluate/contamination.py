"""Eval/train overlap over token ids: which eval documents share n-grams (13 by default, as in
GPT-3's contamination study) with the training split, and how much of each one does.

Two figures per set of documents. `sharing_fraction`: documents with at least one n-gram in the
training data (GPT-3's "dirty"); on code nearly every document shares a licence header or an idiom
with some training file, so this alone cannot gate. `fraction`: documents with at least
`min_overlap` of their n-grams in the training data (PaLM and Llama 2 count a document
contaminated by such a share), which a copied document reaches and an idiom does not. The gate
reads `fraction`; `min_overlap` near 0 makes it GPT-3's definition.

Every n-gram is hashed to 64 bits (a polynomial rolling hash, vectorised in numpy). The eval side is
small: its hashes are sorted once. The training split streams past in chunks; each chunk's hashes
go through a bit table of the eval hashes (one lookup rejects almost all) and the rest are binary
searched, so the cost is linear in training tokens and memory is bounded by a chunk, never
quadratic. A hash collision marks one n-gram as seen that is not: expected (eval n-grams x
training n-grams) / 2**64 of them, 5e-6 for a million against a hundred million.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from llm_pipeline.evaluate.results import SetContamination

CONTAMINATION_NGRAM = 13  # GPT-3's n
CONTAMINATION_MIN_OVERLAP = 0.5  # PaLM's and Llama 2's share of a document
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so the hash is a bijection of each new token
_CHUNK = 1 << 22


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """The hash of every n-gram of `ids`, in order (empty when there are fewer than n ids):
    sum of x[j+i] * M**(n-1-i) for i < n, with x = id + 1 (so token 0 still changes the hash), mod 2**64.

    Computed from prefix sums in a few passes whatever n: with S[k] = sum of x[i] * M**-i for i < k
    (M is odd, so it has an inverse mod 2**64), the n-gram at j is M**(n-1+j) * (S[j+n] - S[j])."""
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    inverse_powers, powers = _powers(len(ids))
    prefix = np.zeros(len(ids) + 1, dtype=np.uint64)
    terms = ids.astype(np.uint64)
    terms += np.uint64(1)
    terms *= inverse_powers[: len(ids)]
    np.cumsum(terms, out=prefix[1:])  # wraps modulo 2**64, as intended
    hashes = prefix[n:] - prefix[:count]
    hashes *= powers[n - 1 : n - 1 + count]
    return hashes


_INVERSE = np.uint64(pow(int(_MULTIPLIER), -1, 2**64))
_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """M**-i and M**i mod 2**64 for i < at least `length` (grown by doubling, shared by every call)."""
    global _POWERS
    if len(_POWERS[0]) < length:
        size = 1 << (length - 1).bit_length()
        inverse, forward = np.full(size, _INVERSE, dtype=np.uint64), np.full(size, _MULTIPLIER, dtype=np.uint64)
        inverse[0] = forward[0] = 1
        _POWERS = (np.cumprod(inverse), np.cumprod(forward))
    return _POWERS


def contamination(
    train: Iterable[np.ndarray],
    eval_sets: dict[str, list[np.ndarray]],
    n: int = CONTAMINATION_NGRAM,
    min_overlap: float = CONTAMINATION_MIN_OVERLAP,
) -> dict[str, SetContamination]:
    """For each named set of eval documents (token ids), against `train` (token arrays of one
    stream, in order): how many documents share any n-gram with it, and how many have at least
    `min_overlap` of their n-grams in it. Documents shorter than n cannot be checked and are
    counted apart."""
    per_doc = {name: [ngram_hashes(np.asarray(doc), n) for doc in docs] for name, docs in eval_sets.items()}
    every = [h for docs in per_doc.values() for h in docs]
    wanted = np.unique(np.concatenate(every)) if every else np.empty(0, dtype=np.uint64)
    seen = _seen_in(train, wanted, n)
    report: dict[str, SetContamination] = {}
    for name, docs in per_doc.items():
        overlaps = [float(seen[np.searchsorted(wanted, h)].mean()) for h in docs if len(h)]
        checked = max(len(overlaps), 1)
        sharing = sum(o > 0 for o in overlaps)
        contaminated = sum(o >= min_overlap and o > 0 for o in overlaps)
        report[name] = SetContamination(
            documents=len(docs),
            too_short=len(docs) - len(overlaps),
            sharing=sharing,
            sharing_fraction=sharing / checked,
            contaminated=contaminated,
            fraction=contaminated / checked,
            mean_overlap=sum(overlaps) / checked,
        )
    return report


def _seen_in(train: Iterable[np.ndarray], wanted: np.ndarray, n: int) -> np.ndarray:
    """seen[i]: the n-gram with hash wanted[i] (sorted, unique) occurs in the training stream."""
    seen = np.zeros(len(wanted), dtype=bool)
    if not len(wanted):
        for _ in train:  # still read: the caller's shards are verified as they stream
            pass
        return seen
    # A table over the hashes' top bits (about 32 slots per wanted n-gram, at most 128 MB) lets
    # almost every training n-gram be rejected by one lookup; only the few that pass are binary searched.
    bits = int(min(27, max(16, np.ceil(np.log2(len(wanted) * 32)))))
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=bool)
    table[wanted >> shift] = True
    carry = np.empty(0, dtype=np.int64)  # the last n-1 tokens: n-grams across chunk and shard borders
    for tokens in train:
        for start in range(0, len(tokens), _CHUNK):
            piece = np.concatenate([carry, tokens[start : start + _CHUNK].astype(np.int64)])
            hashes = ngram_hashes(piece, n)
            hashes = hashes[table[hashes >> shift]]
            where = np.minimum(np.searchsorted(wanted, hashes), len(wanted) - 1)
            seen[where[wanted[where] == hashes]] = True
            carry = piece[-(n - 1) :] if n > 1 else piece[:0]
    return seen
