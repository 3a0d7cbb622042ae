"""The persistent dedup index: an in-memory reference's decisions at any memory budget and chunking, a
build's output the same whether its keys spill or not, a killed build invisible, a missing or damaged
index refused by name and rebuilt by one command."""

import gzip
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_pipeline.corpus.build import CorpusConfig, build_corpus
from llm_pipeline.corpus.dedup import DedupIndex, DedupIndexError
from llm_pipeline.corpus.dedup.runs import BLOCK, NpyWriter, StoredRun
from llm_pipeline.corpus.filters import document_id
from llm_pipeline.corpus.near_dedup import document_signatures
from llm_pipeline.faults import CRASH_ENV
from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.reference_dedup import reference_decisions

_WORDS = [f"w{i}" for i in range(60)]


def _batches(seed: int, sizes: list[int]) -> list[list[str]]:
    """Short documents over a small vocabulary: exact copies, one-word edits (near copies) and chance
    band collisions of documents below the threshold, within and across batches."""
    rng = random.Random(seed)
    made: list[str] = []
    batches = []
    for size in sizes:
        batch = []
        for _ in range(size):
            roll = rng.random()
            if roll < 0.25 and made:
                text = rng.choice(made)
            elif roll < 0.5 and made:
                words = rng.choice(made).split()
                words[rng.randrange(len(words))] = rng.choice(_WORDS)
                text = " ".join(words)
            else:
                text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 30)))
            made.append(text)
            batch.append(text)
        batches.append(batch)
    return batches


def _decide_all(
    tmp_path, batches, budget: int, chunk: int, compactions: Storage | None = None, runs: list | None = None
) -> list[list[str]]:
    earlier, verdicts = [], []
    for number, texts in enumerate(batches):
        spool = tmp_path / f"spool-{number}"
        spool.mkdir()
        index = DedupIndex(0.85, earlier, str(spool), budget, compactions=compactions)
        if runs is not None:
            runs.append(index.runs_per_kind)
        batch_verdicts = []
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            keep, drops = index.decide([document_id(t) for t in part], document_signatures(part))
            reasons = {row: reason for row, reason, _ in drops}
            batch_verdicts += ["keep" if keep[row] else reasons[row] for row in range(len(part))]
            assert index.keys.memory <= budget
        corpus = Storage(str(tmp_path / f"corpus-{number}"))
        index.write_segment(corpus, str(spool))
        corpus.write_json("manifest.json", {"kind": "raw_corpus"})
        earlier.append((f"batch-{number}", corpus))
        verdicts.append(batch_verdicts)
    return verdicts


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=3),
    budget=st.sampled_from([300, 3000, 10**9]),
    chunk=st.sampled_from([1, 7, 64, 2048]),
)
def test_the_decisions_are_the_in_memory_references_at_any_budget_and_chunking(tmp_path_factory, seed, sizes, budget, chunk):
    batches = _batches(seed, sizes)
    expected = reference_decisions(batches, [[document_id(t) for t in b] for b in batches])
    assert _decide_all(tmp_path_factory.mktemp("index"), batches, budget, chunk) == expected


def test_a_small_budget_spills_and_merges_runs_and_keeps_the_decisions(tmp_path):
    batches = _batches(7, [900, 600])
    expected = reference_decisions(batches, [[document_id(t) for t in b] for b in batches])
    assert {"exact_duplicate", "near_duplicate", "keep"} <= set(expected[1])
    spool = tmp_path / "probe"
    spool.mkdir()
    index = DedupIndex(0.85, (), str(spool), 2000)
    for start in range(0, 900, 10):
        index.decide([document_id(t) for t in batches[0][start : start + 10]], document_signatures(batches[0][start : start + 10]))
    # runs were spilled and merged four at a time (a level above the first), memory stayed in budget
    assert index.keys.bands.spilled and max(level for level, _, _ in index.keys.bands.spilled) >= 1
    (tmp_path / "small").mkdir()
    assert _decide_all(tmp_path / "small", batches, 2000, 10) == expected


def test_earlier_batches_runs_are_compacted_as_they_pile_up_and_decide_the_same(tmp_path):
    """Twenty batches: every four of one size tier merged (then four of those), so a build reads a
    few runs instead of one per batch; a killed compaction and a stale one are passed over."""
    batches = _batches(11, [20] * 20)
    expected = reference_decisions(batches, [[document_id(t) for t in b] for b in batches])
    compactions = Storage(str(tmp_path / "dedup_index"))
    compactions.child("killed").write_bytes("exact.npy", b"half a run")  # no covers.json: never read
    runs: list[int] = []
    (tmp_path / "builds").mkdir()
    assert _decide_all(tmp_path / "builds", batches, 10**9, 64, compactions, runs) == expected
    # at most FAN_IN - 1 runs per level: 16 earlier batches are one run (four of four), 19 are four
    assert runs[:9] == [0, 1, 2, 3, 1, 2, 3, 4, 2] and max(runs) == 6 and runs[16] == 1 and runs[19] == 4
    covers = [Storage(compactions.child(name).uri).read_json("covers.json")["covers"] for name in compactions.listdir() if name != "killed"]
    assert sorted(len(c) for c in covers)[-1] == 16  # four compactions of four batches, merged again
    # a batch built again (another corpus URI) makes every compaction holding it unusable: its own segment answers
    rebuilt = tmp_path / "builds" / "corpus-1-again"
    shutil.copytree(tmp_path / "builds" / "corpus-1", rebuilt)
    earlier = [(f"batch-{i}", Storage(str(tmp_path / "builds" / f"corpus-{i}"))) for i in range(20)]
    earlier[1] = ("batch-1", Storage(str(rebuilt)))
    (tmp_path / "late").mkdir()
    index = DedupIndex(0.85, earlier, str(tmp_path / "late"), 10**9, compactions=compactions)
    keep, drops = index.decide([document_id(t) for t in batches[5]], document_signatures(batches[5]))
    assert not keep.any() and {reason for _, reason, _ in drops} <= {"exact_duplicate", "near_duplicate"}
    assert index.runs_per_kind > 4


def test_a_stored_run_finds_keys_across_block_boundaries(tmp_path):
    keys = np.sort(np.random.default_rng(0).integers(0, 2**63, 5 * BLOCK + 17, dtype=np.uint64))
    keys[BLOCK - 2 : BLOCK + 3] = keys[BLOCK - 2]  # one key repeated across a block boundary (exact keys may repeat)
    table = np.column_stack([keys, np.arange(len(keys), dtype=np.uint64)])
    writer = NpyWriter(str(tmp_path / "run.npy"), 2)
    writer.append(table)
    writer.close()
    run = StoredRun(Storage(str(tmp_path)), "run.npy", len(table), 2)
    queries = np.unique(np.concatenate([keys[::97], keys[BLOCK - 2 : BLOCK - 1], [np.uint64(1), np.uint64(2**64 - 1)]]))
    query, rows = run.find(queries)
    expected = [(int(q), int(i)) for q in queries for i in np.flatnonzero(keys == q)]
    assert sorted((int(queries[a]), int(r[1])) for a, r in zip(query, rows)) == sorted(expected)
    assert sum(1 for q, _ in expected if q == keys[BLOCK - 2]) == 5


def _source(folder, texts: list[str], shards: int = 3) -> str:
    folder.mkdir(parents=True)
    for i in range(shards):
        with gzip.open(folder / f"part-{i}.jsonl.gz", "wt") as f:
            for text in texts[i::shards]:
                f.write(json.dumps({"text": text}) + "\n")
    return str(folder)


def _files(folder: str) -> dict[str, bytes]:
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory):
    """Distinct documents, the second batch with exact and near copies of the first's and of its own."""
    tmp = tmp_path_factory.mktemp("batches")
    rng = random.Random(1)
    vocabulary = [f"{rng.choice('bcdfgklmnprst')}{rng.choice('aeiou')}{i}" for i in range(5000)]
    texts = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(60, 120))) for _ in range(4500)]
    first, second = texts[:1500], texts[1500:]
    second += first[::50] + [t.replace(" ", " extra ", 1) for t in first[1::50]] + second[:40]
    random.Random(0).shuffle(second)
    return tmp, _source(tmp / "first", first), _source(tmp / "second", second)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_a_build_gives_the_same_bytes_whether_its_keys_spill_or_not(two_batches, tmp_path):
    """The default budget holds these batches in memory; one megabyte spills the second's keys every
    ~2,200 kept documents. Documents, quarantine, manifest and the segment itself are the same."""
    tmp, first, second = two_batches
    history = Storage(str(tmp_path / "first"))
    build_corpus(CorpusConfig(source_uri=first), history)
    outputs = []
    for budget in (CorpusConfig().dedup_memory_mb, 1):
        out = Storage(str(tmp_path / f"second-{budget}"))
        manifest = build_corpus(CorpusConfig(source_uri=second, dedup_memory_mb=budget), out, earlier=[("first", history)]).model_dump(
            mode="json"
        )
        outputs.append(_files(out.path))
    assert outputs[0] == outputs[1]
    assert manifest["dropped"] == {"exact_duplicate": 30 + 40, "near_duplicate": 30}
    assert manifest["duplicates_of_earlier_batches"] == 60
    assert manifest["dedup_index"]["earlier_documents"] == 1500 and manifest["dedup_index"]["segment"]["documents"] == 3000


def test_a_killed_build_leaves_the_index_as_it_was_and_its_rerun_gives_the_same_result(two_batches, tmp_path):
    _, first, second = two_batches
    history = tmp_path / "first"
    assert _cli("llm_pipeline.corpus", first, "--out", str(history)).returncode == 0
    before = _files(str(history))
    fired = tmp_path / "fired"
    (tmp_path / "tmp").mkdir()  # the killed build's scratch folder is left behind: keep it under tmp_path
    killed = _cli(
        "llm_pipeline.corpus",
        second,
        "--out",
        str(tmp_path / "killed"),
        "--dedup-against",
        str(history),
        env={CRASH_ENV: f"corpus_before_manifest:0:0:{fired}", "TMPDIR": str(tmp_path / "tmp")},
    )
    assert killed.returncode == -9 and fired.exists()
    assert _files(str(history)) == before
    # the killed build's segment was written but never became visible: a build naming it is refused
    refused = _cli("llm_pipeline.corpus", second, "--out", str(tmp_path / "third"), "--dedup-against", str(tmp_path / "killed"))
    assert refused.returncode == 1 and "build did not finish" in refused.stderr
    rerun, clean = (
        _cli("llm_pipeline.corpus", second, "--out", str(tmp_path / name), "--dedup-against", str(history)) for name in ("rerun", "clean")
    )
    assert rerun.returncode == clean.returncode == 0
    assert _files(str(tmp_path / "rerun")) == _files(str(tmp_path / "clean"))


@pytest.mark.parametrize("damage", ["no segment", "no record", "truncated", "record edited"])
def test_a_missing_or_damaged_index_is_refused_by_name_and_one_command_rebuilds_it(two_batches, tmp_path, damage):
    _, first, second = two_batches
    history = Storage(str(tmp_path / "first"))
    build_corpus(CorpusConfig(source_uri=first), history)
    intact = _files(history.path)
    segment = history.child("dedup")
    if damage == "no segment":  # as a corpus written without one
        segment.remove()
    elif damage == "no record":
        segment.remove("segment.json")
    elif damage == "truncated":
        with open(os.path.join(segment.path, "bands.npy"), "r+b") as f:
            f.truncate(os.path.getsize(f.name) - 16)
    else:
        record = segment.read_json("segment.json")
        segment.write_json("segment.json", record | {"documents": record["documents"] - 1})
    with pytest.raises(
        DedupIndexError, match=rf"batch first's dedup index cannot be used: .*python -m llm_pipeline.corpus.dedup rebuild {history.uri}"
    ):
        build_corpus(CorpusConfig(source_uri=second), Storage(str(tmp_path / "second")), earlier=[("first", history)])
    assert not os.path.exists(tmp_path / "second" / "manifest.json")
    rebuilt = _cli("llm_pipeline.corpus.dedup", "rebuild", str(tmp_path))  # a folder holding corpora, as the storage root
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout.splitlines()[0]) == {
        "corpus": history.uri,
        "outcome": "rebuilt",
        "documents": 1500,
        "bytes": json.loads(intact["dedup/segment.json"])["bytes"],
    }
    assert _files(history.path) == intact  # the same bytes the build wrote
    again = _cli("llm_pipeline.corpus.dedup", "rebuild", history.uri)
    assert json.loads(again.stdout)["outcome"] == "kept"
