import dagster as dg

from llm_pipeline.assets.configs import TokenizerConfig, validate_run_config
from llm_pipeline.assets.metadata import stage_metadata
from llm_pipeline.assets.redaction import redacted_step
from llm_pipeline.contracts import CorpusRef, TokenizerRef
from llm_pipeline.corpus.build import iter_documents
from llm_pipeline.resources import StorageResource
from llm_pipeline.storage.folders import Storage, bounded, read_named_file
from llm_pipeline.tokenize.bpe import check_tokenizer, eos_id, id_space, load_tokenizer, tokenizer_hash, train_bpe
from llm_pipeline.tokenize.encoder import choose_encoder

TOKENIZER_JSON_LIMIT = 256 << 20  # published tokenizer.json files are at most tens of MB


def tokenizer_json(storage: StorageResource, tokenizer: TokenizerRef) -> str:
    """The `tokenizer` asset's tokenizer.json text, from the value it materialized."""
    return storage.at(tokenizer.uri).read_bytes("tokenizer.json").decode("utf-8")


def _sample_texts(corpora: dict[str, Storage], budget_bytes: int) -> tuple[list[str], list[str]]:
    """Up to `budget_bytes` of text from the batches in order, and which batches it came from."""
    texts, used, total = [], [], 0
    for name, corpus in corpora.items():
        used.append(name)
        for batch in iter_documents(corpus, columns=("text",)):
            for text in batch.column("text").to_pylist():
                texts.append(text)
                total += len(text.encode("utf-8"))
                if total >= budget_bytes:
                    return texts, used
    return texts, used


# Trained once, when the first batch is in: a new tokenizer would re-tokenize every batch, so
# replacing it is an explicit act (materialize it), never a side effect of new data.
_FIRST_BATCH_IN = (
    dg.AutomationCondition.missing()
    & ~dg.AutomationCondition.in_progress()
    & dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated())
)


@dg.asset(
    group_name="llm_pipeline",
    kinds={"huggingface"},
    ins={"raw_corpus": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
    automation_condition=_FIRST_BATCH_IN.with_label("missing, and a corpus batch is in"),
    description="Byte-level BPE tokenizer (tokenizer.json), trained on the first corpus batches, shared by all batches.",
)
@redacted_step
def tokenizer(
    context: dg.AssetExecutionContext, config: TokenizerConfig, storage: StorageResource, raw_corpus: dict[str, CorpusRef]
) -> dg.Output[TokenizerRef]:
    validate_run_config(context.run_config)
    if not raw_corpus:  # a given tokenizer.json needs text too: tiktoken's identity is proven on it
        raise dg.Failure(
            description="tokenizer: no corpus batch has been materialized yet; materialize raw_corpus for a batch (e.g. 'builtin') first"
        )
    sample, sampled_batches = _sample_texts({k: storage.at(v.uri) for k, v in raw_corpus.items()}, config.train_bytes)
    if config.tokenizer_json_uri:
        options = storage.at(config.tokenizer_json_uri).storage_options
        try:
            data = read_named_file(config.tokenizer_json_uri, "tokenizer_json_uri", TOKENIZER_JSON_LIMIT, **options)
        except ValueError as e:  # names the setting and the file
            raise dg.Failure(description=f"tokenizer: {e}") from None
        try:
            tok = load_tokenizer(data.decode("utf-8"), config.tokenizer_json_uri)
        except ValueError as e:  # includes a file that is not UTF-8
            raise dg.Failure(description=f"tokenizer: cannot use tokenizer_json_uri {bounded(config.tokenizer_json_uri)!r}: {e}") from None
    else:
        tok = train_bpe(iter(sample), config.vocab_size, config.extra_special_tokens)
    try:  # before any shard is written with it
        check_tokenizer(tok, sample, config.tokenizer_json_uri or "the trained tokenizer")
    except ValueError as e:
        raise dg.Failure(description=f"tokenizer: {e}", allow_retries=False) from None
    tok_json = tok.to_str()
    _, report = choose_encoder(tok, sample)
    context.log.info(f"encoder engine: {report['engine']} ({report})")
    out = storage.stage_folder("tokenizer", context.run_id)
    out.write_bytes("tokenizer.json", tok_json.encode("utf-8"))
    out.write_json("encoder.json", report)
    value = TokenizerRef(
        uri=out.uri, sha256=tokenizer_hash(tok_json), vocab_size=id_space(tok), eos_id=eos_id(tok), engine=report["engine"]
    )
    return dg.Output(
        value,
        data_version=dg.DataVersion(value.sha256),  # the same tokenizer again is not a change
        metadata={
            **stage_metadata(value),
            "identity_check": dg.MetadataValue.json(report),
            "trained_on_documents": len(sample),
            "sampled_batches": ", ".join(sampled_batches),
        },
    )
