"""Train (or load) a byte-level BPE tokenizer with Hugging Face `tokenizers`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llm_pipeline.storage.folders import bounded

EOS_TOKEN = "<|endoftext|>"
# The end-of-text token of a given tokenizer, by family, in this order: GPT-2's (ours), Llama 2 /
# Mistral / T5's, Llama 3's, Gemma's. It separates documents in the shards and ends generation.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>")
BYTE_ALPHABET = 256


def validate_vocab_size(vocab_size: int, special_tokens: list[str]) -> None:
    # Every byte needs a token of its own, each special token one more, and BPE needs at least
    # one merge to be a BPE at all.
    minimum = BYTE_ALPHABET + len(special_tokens) + 1
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE with {len(special_tokens)} special "
            f"token(s) {special_tokens} needs at least {minimum}"
        )
    if vocab_size > 2**32:
        raise ValueError(f"vocab_size={vocab_size} does not fit in uint32 token ids")


def special_token_list(extra: Iterable[str] = ()) -> list[str]:
    tokens = [EOS_TOKEN]
    for tok in extra:
        if tok not in tokens:
            tokens.append(tok)
    return tokens


def train_bpe(texts: Iterator[str], vocab_size: int, extra_special_tokens: Iterable[str] = ()) -> Tokenizer:
    specials = special_token_list(extra_special_tokens)
    validate_vocab_size(vocab_size, specials)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Documents are text: a literal "<|endoftext|>" inside one must not become the EOS id.
    tok.encode_special_tokens = True
    return tok


def load_tokenizer(json_text: str, source: str = "tokenizer.json") -> Tokenizer:
    """A tokenizer from its JSON; ValueError naming `source` if it is not one."""
    try:
        tok = Tokenizer.from_str(json_text)
    except Exception as e:  # noqa: BLE001 - the Rust parser raises a bare Exception
        raise ValueError(f"{source} is not a valid tokenizer.json: {e}") from None
    eos_token(tok, source)
    tok.encode_special_tokens = True
    return tok


def eos_token(tok: Tokenizer, source: str = "tokenizer.json") -> str:
    """The tokenizer's end-of-text token: the first of EOS_CANDIDATES it has; ValueError naming `source` if none."""
    for candidate in EOS_CANDIDATES:
        if tok.token_to_id(candidate) is not None:
            return candidate
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special][:10]
    raise ValueError(
        f"{source}: tokenizer has no end-of-text token (one of {', '.join(EOS_CANDIDATES)}); its special "
        f"tokens are {', '.join(specials) or 'none'}"
    )


def eos_id(tok: Tokenizer) -> int:
    token = eos_token(tok)
    found = tok.token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no id for its end-of-text token {token!r}")
    return found


def id_space(tok: Tokenizer) -> int:
    """One past the largest token id: what token arrays and the model's embedding must hold. Not
    get_vocab_size(), which counts tokens: a tokenizer's ids may have gaps."""
    return max(tok.get_vocab(with_added_tokens=True).values()) + 1


_ROUND_TRIP_CHARS = 1 << 20  # of sample text: enough to meet every normalizer and unknown-token rule
_ID_GAPS_ALLOWED = 2  # ids may have gaps (tokens removed from a vocabulary), but not be mostly gaps


def check_tokenizer(tok: Tokenizer, samples: Iterable[str], source: str = "tokenizer.json") -> None:
    """ValueError naming `source` when a tokenizer would corrupt the data it encodes: two tokens with
    one id (a document's " 6" read back as end-of-text), an id space far larger than the vocabulary
    (an embedding mostly never trained), or documents that do not come back byte for byte from
    encode then decode (a normalizer that deletes or changes text, an unknown-token rule)."""
    vocab = tok.get_vocab(with_added_tokens=True)
    holders: dict[int, list[str]] = {}
    for token, token_id in vocab.items():
        holders.setdefault(token_id, []).append(token)
    shared = sorted((i, sorted(tokens)) for i, tokens in holders.items() if len(tokens) > 1)
    if shared:
        shown = "; ".join(f"id {i}: {', '.join(repr(bounded(t, 40)) for t in tokens[:3])}" for i, tokens in shared[:3])
        raise ValueError(f"{source}: {len(shared):,} ids belong to more than one token ({shown}): the ids could not be decoded")
    space = max(vocab.values()) + 1
    if space > _ID_GAPS_ALLOWED * len(vocab) + 256:
        raise ValueError(
            f"{source}: its largest id is {space - 1:,} for {len(vocab):,} tokens: the model's embedding would be "
            f"{space:,} rows, mostly ids no text ever has"
        )
    checked = 0
    for number, text in enumerate(samples):
        back = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
        if back != text:
            at = next((i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
            raise ValueError(
                f"{source}: does not give the text back: sample document {number + 1}, from character {at:,}, "
                f"{bounded(text[at : at + 40], 60)!r} decodes as {bounded(back[at : at + 40], 60)!r}; training on its ids "
                "would train on other text (a normalizer that changes text, or an unknown-token rule)"
            )
        checked += len(text)
        if checked >= _ROUND_TRIP_CHARS:
            break


def made_with_another_tokenizer(made_with: Mapping[str, str | None], expected: str | None = None) -> dict[str, str | None]:
    """The entries of `made_with` (a batch or shard set -> the sha256 of the tokenizer that made its shards) not
    made with `expected` (default: the first entry's): the one rule that the shards trained on together, and
    the model they train, share one tokenizer."""
    expected = expected or next(iter(made_with.values()), None)
    return {name: sha for name, sha in made_with.items() if sha != expected}


def tokenizer_hash(json_text: str) -> str:
    return hashlib.sha256(json_text.encode("utf-8")).hexdigest()


def smallest_uint_type(vocab_size: int) -> str:
    """The smallest unsigned integer type that can hold every token id."""
    for name, bits in (("uint8", 8), ("uint16", 16), ("uint32", 32)):
        if vocab_size <= 2**bits:
            return name
    raise ValueError(f"vocab_size={vocab_size} does not fit in uint32")
