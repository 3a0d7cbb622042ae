"""A user's own data on the first try: a folder or a single file read with no options, in the
layouts public corpora ship in."""

import gzip
import json
import os
import subprocess
import sys

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard

from llm_pipeline.assets.corpus import raw_corpus
from llm_pipeline.corpus.build import CorpusConfig, build_corpus
from llm_pipeline.definitions import make_resources
from llm_pipeline.storage.folders import Storage
from llm_pipeline_tests.helpers import batch_instance, distinct_text

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("LLM_PIPELINE_")}


def _mixed_folder(root) -> dict[str, int]:
    """A folder as a user has it: JSON Lines (gzip), Parquet and plain text files. Documents per file."""
    (root / "notes").mkdir(parents=True)
    with gzip.open(root / "web.jsonl.gz", "wt") as f:
        for i in range(6):
            f.write(json.dumps({"text": distinct_text(i), "url": f"https://example.com/{i}"}) + "\n")
    pq.write_table(pa.table({"text": [distinct_text(i) for i in range(100, 105)], "score": [0.5] * 5}), root / "books.parquet")
    for i in range(3):
        (root / "notes" / f"note{i}.txt").write_text(distinct_text(200 + i))
    return {"web.jsonl.gz": 6, "books.parquet": 5, "notes/note0.txt": 1, "notes/note1.txt": 1, "notes/note2.txt": 1}


def test_the_command_line_reads_a_user_folder_with_no_options(tmp_path):
    counts = _mixed_folder(tmp_path / "mine")
    proc = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.corpus", str(tmp_path / "mine"), "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["files_read"] == len(counts) and summary["documents"] == sum(counts.values())
    assert summary["glob"] == "**/*" and summary["exclude"] == []
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    by_file = {f["uri"].split("/mine/")[1]: (f["format"], f["documents"]) for f in manifest["files"]}
    assert by_file == {
        "web.jsonl.gz": ("jsonl", 6),
        "books.parquet": ("parquet", 5),
        **{f"notes/note{i}.txt": ("text", 1) for i in range(3)},
    }


def test_help_says_what_the_defaults_read():
    proc = subprocess.run(
        [sys.executable, "-m", "llm_pipeline.corpus", "--help"],
        cwd=REPO_ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = " ".join(proc.stdout.split())
    assert "unset: every file (the reader chosen by each name), and '**/*.py' for the built-in corpus" in text


def test_the_asset_reads_a_user_folder_given_only_its_uri(tmp_path):
    counts = _mixed_folder(tmp_path / "mine")
    result = dg.materialize(
        [raw_corpus],
        resources=make_resources(str(tmp_path / "root")),
        instance=batch_instance(),
        partition_key="builtin",
        run_config={"ops": {"raw_corpus": {"config": {"source_uri": str(tmp_path / "mine")}}}},
    )
    assert result.success
    metadata = result.asset_materializations_for_node("raw_corpus")[0].metadata
    assert metadata["files_read"].value == len(counts) and metadata["documents"].value == sum(counts.values())


def test_the_builtin_corpus_keeps_its_own_pattern_and_budget():
    cfg = CorpusConfig()
    assert (cfg.file_glob, cfg.excluded, cfg.byte_budget) == ("**/*.py", ("site-packages/*", "dist-packages/*"), 8_000_000)
    mine = CorpusConfig(source_uri="/data/mine")
    assert (mine.file_glob, mine.excluded, mine.byte_budget) == ("**/*", (), None)


# --- the layouts public corpora ship in -----------------------------------------------------------


def _fineweb(root) -> int:
    """FineWeb: data/<dump>/<n>.parquet, `text` beside id, dump, url, language, token_count, ..."""
    n = 0
    for dump in ("CC-MAIN-2024-10", "CC-MAIN-2024-18"):
        (root / "data" / dump).mkdir(parents=True)
        for part in range(2):
            texts = [distinct_text(1000 + n + i) for i in range(4)]
            pq.write_table(
                pa.table(
                    {
                        "text": texts,
                        "id": [f"<urn:uuid:{n + i}>" for i in range(4)],
                        "dump": [dump] * 4,
                        "url": [f"https://x/{n + i}" for i in range(4)],
                        "language": ["en"] * 4,
                        "language_score": [0.9] * 4,
                        "token_count": [len(t) // 4 for t in texts],
                    }
                ),
                root / "data" / dump / f"{part:03d}_00000.parquet",
            )
            n += 4
    (root / "README.md").write_text("---\nlicense: odc-by\n---\n# FineWeb sample\n" + distinct_text(1))  # the dataset card
    return n + 1


def _dolma(root) -> int:
    """Dolma: documents/<source>-<n>.json.gz, JSON Lines with `text` and a `metadata` object."""
    (root / "documents").mkdir(parents=True)
    for part in range(2):
        with gzip.open(root / "documents" / f"c4-{part:04d}.json.gz", "wt") as f:
            for i in range(5):
                f.write(
                    json.dumps(
                        {
                            "id": f"{part}-{i}",
                            "text": distinct_text(2000 + 10 * part + i),
                            "source": "c4",
                            "added": "2023-08-01",
                            "metadata": {"url": "https://x", "lang": {"en": 0.99}},
                        }
                    )
                    + "\n"
                )
    return 10


def _redpajama(root) -> int:
    """RedPajama: <source>/<n>.jsonl.zst, `text` and `meta`."""
    (root / "arxiv").mkdir(parents=True)
    compressor = zstandard.ZstdCompressor()
    lines = "".join(json.dumps({"text": distinct_text(3000 + i), "meta": {"arxiv_id": str(i)}}) + "\n" for i in range(7))
    (root / "arxiv" / "arxiv_0000.jsonl.zst").write_bytes(compressor.compress(lines.encode()))
    return 7


def _markdown(root) -> int:
    """A folder of .md and .txt files, one document each, some in subfolders."""
    (root / "guide").mkdir(parents=True)
    for i in range(3):
        (root / f"page{i}.md").write_text(f"# Page {i}\n\n{distinct_text(4000 + i)}\n")
        (root / "guide" / f"chapter{i}.txt").write_text(distinct_text(4100 + i))
    return 6


@pytest.mark.parametrize("layout", [_fineweb, _dolma, _redpajama, _markdown], ids=lambda f: f.__name__.strip("_"))
def test_public_corpus_layouts_are_read_with_the_defaults(tmp_path, layout):
    documents = layout(tmp_path / "corpus")
    manifest = build_corpus(CorpusConfig(source_uri=str(tmp_path / "corpus")), Storage(str(tmp_path / "out"))).model_dump(mode="json")
    assert manifest["documents"] == documents and manifest["dropped"] == {}, manifest["dropped_examples"]
    assert manifest["files_skipped"] == 0


def test_a_single_file_is_a_source(tmp_path):
    _redpajama(tmp_path / "corpus")
    file = tmp_path / "corpus" / "arxiv" / "arxiv_0000.jsonl.zst"
    manifest = build_corpus(CorpusConfig(source_uri=str(file)), Storage(str(tmp_path / "out"))).model_dump(mode="json")
    assert manifest["documents"] == 7 and manifest["files_read"] == 1
    assert manifest["files"][0]["uri"] == f"file://{file}"


# --- bring your own tokenizer -----------------------------------------------------------------------


def _foreign_tokenizer(texts: list[str], path) -> int:
    """A byte-level BPE in another family's style: Llama 2's special tokens (<s>, </s>, <unk>, <pad>; no
    <|endoftext|>) and a vocabulary of 70,000 ids, above what uint16 holds. Returns the id space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<s>", "</s>", "<unk>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    # The rest of a large vocabulary: tokens no merge of this small corpus reaches (as a big tokenizer's
    # rare tokens are for a small corpus), up to id 69,999.
    vocab.update({f"ĠrareWord{i}": i for i in range(max(vocab.values()) + 1, 70_000)})
    path.write_text(json.dumps(data))
    return 70_000


@pytest.mark.e2e
def test_a_given_tokenizer_with_a_large_vocabulary_and_foreign_specials_goes_end_to_end(tmp_path, sample_texts):
    """A user's tokenizer.json (ids above 65,535, </s> as end of text) through shards (uint32), training,
    evaluation and publishing; transformers loads the published folder and agrees with it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_pipeline.definitions import ASSETS, CHECKS
    from llm_pipeline.publish.verify import verify
    from llm_pipeline.tokenize.bpe import load_tokenizer
    from llm_pipeline.train.weights import load_trained_model

    ids = _foreign_tokenizer(sample_texts, tmp_path / "tokenizer.json")
    config = {
        "raw_corpus": {"max_bytes": 400_000},
        "tokenizer": {"tokenizer_json_uri": str(tmp_path / "tokenizer.json")},
        "tokenized_shards": {"val_fraction": 0.1},
        "trained_checkpoint": {
            "preset": "tiny",
            "seq_len": 64,
            "micro_batch": 4,
            "steps": 6,
            "warmup_steps": 1,
            "checkpoint_every": 6,
            "log_every": 3,
            "dtype": "fp32",
            "launcher": "none",
            "nproc": 1,
        },
        "eval_metrics": {"max_loss": 100.0, "max_new_tokens": 4, "max_tokens": 3000, "continuation_items": 20},
    }
    result = dg.materialize(
        ASSETS + CHECKS,
        resources=make_resources(str(tmp_path / "root")),
        instance=batch_instance(),
        partition_key="builtin",
        run_config={"ops": {k: {"config": v} for k, v in config.items()}},
    )
    assert result.success
    tokenizer = result.output_for_node("tokenizer")
    assert tokenizer.vocab_size == ids and tokenizer.eos_id == 1  # </s>
    shards = Storage(result.output_for_node("tokenized_shards").uri).read_json("manifest.json")
    assert shards["dtype"] == "uint32" and shards["vocab_size"] == ids
    published = result.output_for_node("published_model")
    assert verify(Storage(published.uri)) == []

    folder = published.uri
    hf_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert hf_tokenizer.eos_token == "</s>" and model.config.eos_token_id == 1 and model.config.vocab_size == ids
    ours = load_tokenizer((tmp_path / "tokenizer.json").read_text())
    text = sample_texts[0][:2000]
    assert hf_tokenizer(text, add_special_tokens=False).input_ids == ours.encode(text, add_special_tokens=False).ids
    trained = load_trained_model(Storage(result.output_for_node("trained_checkpoint").final_uri))
    x = torch.tensor([hf_tokenizer(text, add_special_tokens=False).input_ids[:64]])
    with torch.no_grad():
        assert (model.eval()(x).logits - trained(x)).abs().max().item() < 1e-4
