"""Training documents that would contaminate the batch's own validation split, dropped as shards are written.

The contamination gate after training (evaluate/contamination.py) flags a validation document when at
least `min_overlap` of its token n-grams occur in the training split. Dropping every training document
that shares a single n-gram with a validation document would drop most of a code corpus (licence
headers and idioms recur across files: 456 of the built-in corpus's 642 training files), so the rule
here is the gate's own: a training document is dropped exactly when keeping it would lift some
validation document to `min_overlap`. Decisions are made in corpus order, each training document
against the validation documents and the training documents kept before it, so:

- the gate's figure on the batch's own split is 0 at the same n and `min_overlap`, by construction;
- the kept documents are the same at any worker count or executor (the order is the corpus's).

Memory: the validation split's n-gram hashes, about 20 bytes per validation token. Training documents
stream past in groups; one table lookup rejects almost every n-gram, as in the gate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from llm_pipeline.evaluate.contamination import ngram_hashes

# Training documents are hashed together, one numpy pass a group instead of one a document; groups of
# about 64K tokens keep every temporary array in reused heap memory (larger ones are fresh pages each
# time, and their page faults cost more than the hashing).
_GROUP_TOKENS = 1 << 16

Document = tuple[str, np.ndarray, int]  # (split, token ids without EOS, UTF-8 bytes of the text)


class HeldOutNgrams:
    """The validation documents' n-grams, and how much of each document the kept training data holds."""

    def __init__(self, val_documents: Iterable[np.ndarray], n: int, min_overlap: float):
        self.n, self.min_overlap = n, min_overlap
        unique, counts, lengths = [], [], []
        for doc in val_documents:
            hashes = ngram_hashes(np.asarray(doc), n)
            distinct, times = np.unique(hashes, return_counts=True)
            unique.append(distinct)
            counts.append(times.astype(np.uint32))
            lengths.append(len(hashes))
        self.lengths = np.array(lengths, dtype=np.float64)  # n-grams per validation document, repeats counted
        every = np.concatenate(unique) if unique else np.empty(0, dtype=np.uint64)
        owner = np.repeat(np.arange(len(unique), dtype=np.uint32), [len(u) for u in unique])
        del unique
        # For each n-gram (sorted): the validation documents that hold it and how many times, as CSR.
        order = np.argsort(every, kind="stable")
        every = every[order]
        self.holders = owner[order]
        self.holder_counts = np.concatenate(counts)[order] if counts else np.empty(0, dtype=np.uint32)
        del order, owner, counts
        first = np.ones(len(every), dtype=bool)
        first[1:] = every[1:] != every[:-1]
        self.wanted = every[first]
        self.starts = np.append(np.flatnonzero(first), len(every))
        del every, first
        self.seen = np.zeros(len(self.wanted), dtype=bool)  # held by some kept training document
        self.seen_count = np.zeros(len(self.lengths), dtype=np.float64)  # per validation document
        # A bit per slot of the hashes' top bits, about 32 slots per n-gram (at most 32 MB): one lookup rejects
        # almost every training n-gram. Packed 8 to a byte, it stays in cache where a bool table would not.
        bits = int(min(28, max(16, np.ceil(np.log2(max(len(self.wanted), 1) * 32)))))
        self.shift = np.uint64(64 - bits)
        self.table = np.zeros(1 << (bits - 3), dtype=np.uint8)
        slot = self.wanted >> self.shift
        np.bitwise_or.at(self.table, (slot >> np.uint64(3)).astype(np.int64), np.left_shift(1, slot & np.uint64(7)).astype(np.uint8))

    def hits(self, documents: list[np.ndarray]) -> list[np.ndarray]:
        """For each document, the indices (into `wanted`) of the validation n-grams it holds, unique."""
        n, found = self.n, [np.empty(0, dtype=np.int64)] * len(documents)
        lengths = np.array([len(d) for d in documents], dtype=np.int64)
        if not len(self.wanted) or not lengths.size or lengths.max() < n:
            return found
        hashes = ngram_hashes(np.concatenate(documents), n)  # n-grams across document borders too, masked below
        ends = np.cumsum(lengths)
        across = (ends[:, None] - np.arange(1, n)[None, :]).ravel()  # the last n-1 starts of each document
        slot = hashes >> self.shift
        keep = ((self.table[slot >> np.uint64(3)] >> (slot & np.uint64(7)).astype(np.uint8)) & np.uint8(1)).view(bool)
        keep[across[(across >= 0) & (across < len(hashes))]] = False
        position = np.flatnonzero(keep)
        where = np.minimum(np.searchsorted(self.wanted, hashes[position]), len(self.wanted) - 1)
        match = self.wanted[where] == hashes[position]
        position, where = position[match], where[match]
        doc = np.searchsorted(ends, position, side="right")
        pairs = np.unique(doc * len(self.wanted) + where)  # by document, then n-gram
        bounds = np.searchsorted(pairs // len(self.wanted), np.arange(len(documents) + 1))
        index = pairs % len(self.wanted)
        return [index[bounds[d] : bounds[d + 1]] for d in range(len(documents))]

    def admit(self, held: np.ndarray) -> bool:
        """Keep a training document holding validation n-grams `held`, unless it would lift a validation
        document to `min_overlap` of its n-grams held by kept training data."""
        new = held[~self.seen[held]]
        if not new.size:
            return True
        lo, sizes = self.starts[new], self.starts[new + 1] - self.starts[new]
        take = np.repeat(lo - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())  # every holder of every new n-gram
        holders, inverse = np.unique(self.holders[take], return_inverse=True)
        added = np.bincount(inverse, weights=self.holder_counts[take])
        overlap = (self.seen_count[holders] + added) / self.lengths[holders]
        if np.any(overlap >= self.min_overlap):
            return False
        self.seen[new] = True
        self.seen_count[holders] += added
        return True


def decontaminated(documents: Iterable[Document], held_out: HeldOutNgrams, dropped: dict) -> Iterator[Document]:
    """`documents` in order without the training documents `held_out` refuses; `dropped` counts them
    ("documents", "tokens", "text_bytes")."""
    group: list[Document] = []
    tokens = 0

    def flush() -> Iterator[Document]:
        train = [i for i, (split, _, _) in enumerate(group) if split == "train"]
        held = dict(zip(train, held_out.hits([group[i][1] for i in train])))
        for i, document in enumerate(group):
            if i in held and held[i].size and not held_out.admit(held[i]):
                dropped["documents"] += 1
                dropped["tokens"] += int(document[1].size)
                dropped["text_bytes"] += document[2]
                continue
            yield document
        group.clear()

    for document in documents:
        group.append(document)
        tokens += len(document[1])
        if tokens >= _GROUP_TOKENS:
            yield from flush()
            tokens = 0
    yield from flush()
