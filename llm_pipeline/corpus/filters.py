"""Per-document quality filters and deduplication. Each drop has a named reason."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 64
    max_chars: int = 1_000_000
    # Share of characters that are printable or ordinary whitespace; binary junk and
    # mis-decoded text score low.
    min_printable_fraction: float = 0.95
    near_dedup: bool = True
    # Estimated Jaccard similarity of word 5-gram sets above which a later document is a
    # near duplicate of an earlier one.
    near_dedup_threshold: float = 0.85

    def __post_init__(self):
        if self.min_chars < 0:
            raise ValueError(f"min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars < max(1, self.min_chars):
            raise ValueError(f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars}) and >= 1")
        if not 0.0 <= self.min_printable_fraction <= 1.0:
            raise ValueError(f"min_printable_fraction must be in [0, 1], got {self.min_printable_fraction}")
        if not 0.0 < self.near_dedup_threshold <= 1.0:
            raise ValueError(f"near_dedup_threshold must be in (0, 1], got {self.near_dedup_threshold}")


def document_id(text: str) -> str:
    """Stable content hash: the same text always gets the same id, wherever it came from."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


_UNPRINTABLE = re.compile(r"[^\t\n\r\x20-\x7e\u00a0-\U0010ffff]|[\ud800-\udfff\ufffd]")


def printable_fraction(text: str) -> float:
    if not text:
        return 0.0
    return 1.0 - len(_UNPRINTABLE.findall(text)) / len(text)


def quality_reason(text: str, cfg: FilterConfig) -> str | None:
    """Why a decoded document is rejected, or None if it is kept."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if printable_fraction(text) < cfg.min_printable_fraction:
        return "low_quality"
    return None


# --- near-duplicate detection: MinHash signatures with LSH banding ---------------------------

_NUM_PERM = 64
_BANDS = 8  # 8 bands x 8 rows: pairs above ~0.77 Jaccard almost always share a band
_MERSENNE = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(0x5EED)
_A = _rng.integers(1, (1 << 61) - 1, size=_NUM_PERM, dtype=np.uint64)
_B = _rng.integers(0, (1 << 61) - 1, size=_NUM_PERM, dtype=np.uint64)


def minhash_signature(text: str, shingle: int = 5) -> np.ndarray:
    words = text.split()
    if len(words) < shingle:
        grams = [" ".join(words)]
    else:
        grams = [" ".join(words[i : i + shingle]) for i in range(len(words) - shingle + 1)]
    # 32-bit hashes keep a*h below 2^93 from overflowing into garbage: the product is taken
    # modulo 2^64 by numpy, which is still a fine universal hash family for our purpose.
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(g.encode(), digest_size=4).digest(), "little") for g in set(grams)),
        dtype=np.uint64,
    )
    return ((np.outer(_A, hashes) + _B[:, None]) % _MERSENNE).min(axis=1)


class NearDuplicateIndex:
    """Remembers kept documents; `is_near_duplicate` answers for a new one and adds it if not."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.rows = _NUM_PERM // _BANDS
        self.buckets: dict[tuple[int, bytes], int] = {}
        self.signatures: list[np.ndarray] = []

    def is_near_duplicate(self, text: str) -> bool:
        sig = minhash_signature(text)
        keys = [(b, sig[b * self.rows : (b + 1) * self.rows].tobytes()) for b in range(_BANDS)]
        for key in keys:
            other = self.buckets.get(key)
            if other is not None and np.mean(self.signatures[other] == sig) >= self.threshold:
                return True
        index = len(self.signatures)
        self.signatures.append(sig)
        for key in keys:
            self.buckets.setdefault(key, index)
        return False
