"""A final checkpoint as a Hugging Face model folder: config, tokenizer files, generation config, weights.

What `transformers` loads: publishing writes it (with a model card and a manifest), and evaluation
writes it locally for lm-evaluation-harness. Both use this one export, so neither imports the other.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer

from llm_pipeline.storage.folders import Storage, json_bytes
from llm_pipeline.train.hf_config import hf_config
from llm_pipeline.train.model_config import ModelConfig


def tokenizer_files(eos: str) -> dict[str, dict]:
    """transformers' tokenizer settings: the end-of-text token `eos` is also BOS, UNK and padding (a
    byte-level BPE has no unknown input, and training packs documents with it alone)."""
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos,
        "eos_token": eos,
        "unk_token": eos,
        "pad_token": eos,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    special = {"bos_token": eos, "eos_token": eos, "unk_token": eos, "pad_token": eos}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def hf_files(model_cfg: ModelConfig, tokenizer_json: str, eos_id: int) -> dict[str, bytes]:
    """A Hugging Face model folder's files, all but the weights and the model card."""
    files: dict[str, bytes] = {
        "config.json": json_bytes(hf_config(model_cfg, eos_id)),
        "tokenizer.json": tokenizer_json.encode("utf-8"),
        "generation_config.json": json_bytes(
            {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id, "do_sample": True, "temperature": 0.8, "top_k": 50}
        ),
    }
    eos = Tokenizer.from_str(tokenizer_json).id_to_token(eos_id)
    if eos is None:
        raise ValueError(f"eos_id {eos_id} is not an id of the tokenizer")
    files.update({k: json_bytes(v) for k, v in tokenizer_files(eos).items()})
    return files


def export_local(final: Storage, path: str, tokenizer_json: str, eos_id: int) -> None:
    """A final checkpoint as a Hugging Face model folder at the local `path` (what `publish`
    writes, less the card and the manifest), for clients that read a folder: lm-evaluation-harness."""
    model_cfg = ModelConfig.from_dict(final.read_json("model_config.json"), f"{final.uri}/model_config.json")
    os.makedirs(path, exist_ok=True)
    for file_name, data in hf_files(model_cfg, tokenizer_json, eos_id).items():
        with open(os.path.join(path, file_name), "wb") as f:
            f.write(data)
    final.get_file("model.safetensors", os.path.join(path, "model.safetensors"))
