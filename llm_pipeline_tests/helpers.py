"""Builders shared by tests: a small real corpus -> tokenizer -> shards chain."""

import os
import random

import numpy as np

from llm_pipeline.corpus.build import CorpusConfig, build_corpus
from llm_pipeline.corpus.cleaning import PRESETS, Rules, clean
from llm_pipeline.prefetch import prefetch
from llm_pipeline.storage.folders import Storage
from llm_pipeline.storage.manifests import MANIFEST
from llm_pipeline.tokenize.bpe import id_space, tokenizer_hash
from llm_pipeline.tokenize.encoder import DocumentEncoder
from llm_pipeline.tokenize.manifest import ShardManifest
from llm_pipeline.tokenize.shards import ShardConfig, write_shards
from llm_pipeline.train.data import DataMixture, MicroBatches, ShardError, TokenWindows, checked_manifests, id_limit, read_shard

_NOUNS = (
    "river",
    "teacher",
    "garden",
    "village",
    "engine",
    "library",
    "market",
    "window",
    "mountain",
    "letter",
    "kitchen",
    "painter",
    "harbor",
    "forest",
    "student",
    "bridge",
    "doctor",
    "island",
    "farmer",
    "station",
    "museum",
    "soldier",
    "orchard",
    "captain",
    "basket",
    "theater",
    "meadow",
    "printer",
    "castle",
    "lantern",
)
_VERBS = (
    "watched",
    "carried",
    "painted",
    "visited",
    "repaired",
    "described",
    "followed",
    "noticed",
    "cleaned",
    "opened",
    "borrowed",
    "measured",
    "guarded",
    "planted",
    "finished",
    "explained",
    "ordered",
    "remembered",
    "crossed",
    "counted",
)
_ADJECTIVES = (
    "quiet",
    "old",
    "narrow",
    "bright",
    "heavy",
    "gentle",
    "distant",
    "famous",
    "small",
    "careful",
    "early",
    "patient",
    "wooden",
    "modern",
    "simple",
    "crowded",
    "silent",
    "golden",
    "busy",
    "friendly",
)
_TEMPLATES = (
    "The {a} {n} {v} the {n2} near the {a2} {n3}.",
    "Every morning a {a} {n} {v} the {n2} with great care.",
    "After the rain, the {n} and the {n2} were {a} again.",
    "Nobody knew why the {a} {n} {v} one {a2} {n2} that day.",
    "In the evening, she {v} the {n} that stood beside the {n2}.",
    "It was said that the {n} had {v} the {a} {n2} for years.",
    "They {v} a {a} {n} and then walked back to the {n2}.",
    "When the {n} returned, the {a} {n2} {v} the whole {n3}.",
)


def distinct_text(i: int) -> str:
    """Document i of a corpus of English prose whose documents are neither duplicates nor near duplicates
    of each other, and which passes the `web` cleaning steps (language, Gopher, C4, FineWeb): a draw that
    does not (one in a few hundred repeats a phrase too often) is drawn again."""
    for attempt in range(100):
        text = _prose(random.Random(i if attempt == 0 else f"{i}/{attempt}"), i)
        if clean(text, PRESETS["web"], _WEB_RULES).reason is None:
            return text
    raise AssertionError(f"no draw of document {i} passes the web steps")


_WEB_RULES = Rules(min_chars=64, max_chars=1_000_000, min_printable_fraction=0.95, languages=("en",), min_language_score=0.65)


def _prose(rng: random.Random, i: int) -> str:

    def sentence() -> str:
        nouns = rng.sample(_NOUNS, 3)
        adjectives = rng.sample(_ADJECTIVES, 2)
        return rng.choice(_TEMPLATES).format(a=adjectives[0], a2=adjectives[1], n=nouns[0], n2=nouns[1], n3=nouns[2], v=rng.choice(_VERBS))

    paragraphs = [" ".join(sentence() for _ in range(rng.randint(3, 5))) for _ in range(3)]
    return "\n\n".join(paragraphs) + f" This is note {i}."


# Prose in another language, and prose with an e-mail and a public IP address: what the web preset drops and formats.
GERMAN = (
    "Der alte Bauer ging jeden Morgen mit seinem Hund über die Felder und sah nach den Kühen. " * 2
    + "Im Winter war es kalt, und die Kinder spielten im Schnee, bis es dunkel wurde. Danach aßen alle zusammen."
)
WITH_CONTACT = distinct_text(8).replace("This is note 8.", "Write to jane.doe@mail.example or reach the server at 8.8.8.8 today.")


def stdlib_files(count: int, skip: int = 0) -> list[str]:
    """Real Python source files from the standard library (4-60 kB), in a fixed order."""
    stdlib = os.path.dirname(os.__file__)
    names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py") and 4_000 < os.path.getsize(os.path.join(stdlib, n)) < 60_000)
    return [os.path.join(stdlib, n) for n in names[skip : skip + count]]


# trained_checkpoint settings that train in seconds, for the flows that train again and again.
TINY_TRAINING = {
    "preset": "tiny",
    "seq_len": 32,
    "micro_batch": 4,
    "steps": 4,
    "warmup_steps": 1,
    "checkpoint_every": 4,
    "log_every": 2,
    "dtype": "fp32",
    "launcher": "none",
    "nproc": 1,
}


def make_shards(
    tmp_path, root, tokenizer, texts, shard_cfg: ShardConfig | None = None, engine: str = "tiktoken", vocab_size: int | None = None
):
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (src / f"{i:03d}.py").write_text(text)
    corpus = root.child("corpus")
    build_corpus(CorpusConfig(source_uri=str(src)), corpus)
    shards = root.child("shards")
    manifest = write_shards(
        corpus,
        shards,
        DocumentEncoder(tokenizer, engine),
        vocab_size or id_space(tokenizer),
        tokenizer_hash(tokenizer.to_str()),
        shard_cfg or ShardConfig(val_fraction=0.2, tokens_per_shard=20_000),
    )
    return corpus, shards, manifest.model_dump(mode="json")  # as stored: the tests edit it and write it back


def step_failure(result) -> tuple[str, str]:
    """The first failed step of a `materialize(..., raise_on_error=False)` result: its key and its error message."""
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.step_key, failure.event_specific_data.error.message


def eval_report(parts, **gates):
    """The EvalReport the asset checks read, from a suite's result (or the parts a test gives, a dict)
    and the gates under test; the gates not given are open."""
    from llm_pipeline.contracts import EvalReport, Gates
    from llm_pipeline.evaluate.results import ContaminationReport
    from llm_pipeline.evaluate.suite import SuiteResult

    if isinstance(parts, SuiteResult):
        parts = {
            **parts.held_out_metrics.model_dump(),
            "samples": parts.samples,
            "harness": parts.harness,
            "harness_skipped": parts.harness_skipped,
            "contamination": parts.contamination,
            "seconds": parts.seconds,
        }

    measured = {
        "loss": 1.0,
        "perplexity": 2.7,
        "bits_per_byte": 1.0,
        "tokens_evaluated": 1,
        "bytes_evaluated": 1,
        "documents_evaluated": 1,
        "window": 1,
        "dtype": "fp32",
        "samples": (),
        "harness": None,
        "harness_skipped": {},
        "contamination": ContaminationReport(n=13, min_overlap=0.5, sets={}, fraction=0.0),
        "seconds": {},
    }
    open_gates = {"max_loss": float("inf"), "max_perplexity": None, "regression_tolerance": 0.0, "min_scores": {}, "max_contamination": 1.0}
    return EvalReport(
        **{**measured, **parts}, checkpoint_uri="", checkpoint="", uniform_loss=1.0, gates=Gates(**{**open_gates, **gates}), baseline=None
    )


def batch_instance(*batches: str, home: str | None = None):
    """A Dagster instance that knows the given corpus batches (partitions); `builtin` by default.
    With `home`, a persistent one (runs in subprocesses, re-execution); else in memory."""
    import dagster as dg

    from llm_pipeline.assets.partitions import corpus_batches

    if home:
        os.makedirs(home, exist_ok=True)
    instance = dg.DagsterInstance.local_temp(home) if home else dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(corpus_batches.name, list(batches or ["builtin"]))
    return instance


def datasets_cache(monkeypatch, path) -> str:
    """Point the Hugging Face datasets library at the cache folder `path`, in this process (it reads
    HF_DATASETS_CACHE once, at import) and in the processes it starts."""
    import datasets.config

    monkeypatch.setenv("HF_DATASETS_CACHE", str(path))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(path))
    return str(path)


def cache_arc_easy(cache_dir: str, questions: int = 20) -> None:
    """A Hugging Face datasets cache entry for the harness's `arc_easy` (allenai/ai2_arc, ARC-Easy),
    in the layout `datasets` writes when it downloads one (arrow files + dataset_info.json), so an
    offline run finds it as it would after `python -m llm_pipeline.evaluate.harness cache arc_easy`.
    The rows are ours (simple sums), not ARC's: no download here."""
    import datasets
    from datasets.arrow_writer import ArrowWriter
    from datasets.splits import SplitDict, SplitInfo

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "choices": {"text": datasets.Sequence(datasets.Value("string")), "label": datasets.Sequence(datasets.Value("string"))},
            "answerKey": datasets.Value("string"),
        }
    )
    folder = os.path.join(cache_dir, "allenai___ai2_arc", "ARC-Easy", "0.0.0", "0" * 16)
    os.makedirs(folder, exist_ok=True)
    splits = SplitDict(dataset_name="ai2_arc")
    for split, count in (("train", 5), ("validation", 5), ("test", questions)):
        rows = [
            {
                "id": f"{split}-{i}",
                "question": f"What is {i} plus {i}?",
                "answerKey": "A",
                "choices": {"text": [str(2 * i), str(2 * i + 1), str(i), "none"], "label": ["A", "B", "C", "D"]},
            }
            for i in range(count)
        ]
        with ArrowWriter(path=os.path.join(folder, f"ai2_arc-{split}.arrow"), features=features) as writer:
            writer.write_table(datasets.Dataset.from_list(rows, features=features).data.table)
            written, size = writer.finalize()
        splits.add(SplitInfo(name=split, num_bytes=size, num_examples=written, dataset_name="ai2_arc"))
    datasets.DatasetInfo(
        features=features, config_name="ARC-Easy", dataset_name="ai2_arc", splits=splits, version="0.0.0"
    ).write_to_directory(folder)


def published(tmp_path, tokenizer):
    """A minimal published version folder of a tiny random model, written by the real publish():
    (registry, the publish manifest)."""
    from safetensors.torch import save_file

    from llm_pipeline.publish.export import publish
    from llm_pipeline.storage.folders import Storage
    from llm_pipeline.train.model import CausalLM
    from llm_pipeline.train.model_config import ModelConfig

    final = Storage(str(tmp_path / "final"))
    model_cfg = ModelConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2, ffn_hidden=32, max_seq_len=32)
    final.write_json("model_config.json", model_cfg.to_dict())
    save_file(CausalLM(model_cfg).state_dict(), str(tmp_path / "final" / "model.safetensors"))
    registry = Storage(str(tmp_path / "registry"))
    return registry, publish(registry, "m", final, tokenizer.to_str(), 0, {"loss": 1.0}, {}, {}).model_dump(mode="json")


def load_tokens(
    shard_sets: list[Storage], split: str, expected_tokenizer_sha256: str | None = None, vocab_size: int | None = None
) -> tuple[np.ndarray, ShardManifest]:
    """All tokens of one split of several shard sets (in order) as one array, read from the Parquet shards
    through the library's checks (manifest, tokenizer, sha256, id range), and the first set's manifest:
    what the trainer's token store maps, read the other way, to compare with it."""
    manifests = checked_manifests(shard_sets, expected_tokenizer_sha256)
    work = [
        (shards, entry, id_limit(manifests[shards.uri], vocab_size))
        for shards in shard_sets
        for entry in manifests[shards.uri].split_shards(split)
    ]
    if not work:
        raise ShardError(f"no {split} tokens in {', '.join(f'{s.uri}/{MANIFEST}' for s in shard_sets)}")
    shards = prefetch((read_shard(shards, entry, limit) for shards, entry, limit in work), depth=2)
    return np.concatenate(list(shards)), manifests[shard_sets[0].uri]


def load_split_tokens(
    shards: Storage, split: str, expected_tokenizer_sha256: str | None = None, vocab_size: int | None = None
) -> tuple[np.ndarray, dict]:
    """One shard set's tokens of `split` (load_tokens)."""
    return load_tokens([shards], split, expected_tokenizer_sha256, vocab_size)


def single_source(tokens, seq_len: int, micro_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> MicroBatches:
    """The loader of one token stream (a mixture of one source)."""
    return MicroBatches(DataMixture([TokenWindows(tokens, seq_len, seed)], [1.0], seed), micro_batch, rank, world_size)


def upload_dir(folder: Storage, local_dir: str) -> list[str]:
    """Copy every file under local_dir into `folder`; returns the relative names copied."""
    names = []
    for dirpath, _, files in os.walk(local_dir):
        for file in sorted(files):
            rel = os.path.relpath(os.path.join(dirpath, file), local_dir).replace(os.sep, "/")
            folder.put_file(os.path.join(dirpath, file), rel)
            names.append(rel)
    return sorted(names)
