import os

import pytest
import torch
from safetensors.torch import save_file

from llm_pipeline.publish.export import publish
from llm_pipeline.publish.generate import generate
from llm_pipeline.publish.registry import LATEST, resolve_version
from llm_pipeline.publish.verify import main as verify_main
from llm_pipeline.publish.verify import verify
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.model_config import ModelConfig

CFG = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=64)


@pytest.fixture()
def trained(tmp_path, storage):
    torch.manual_seed(0)
    model = CausalLM(CFG).eval()
    final = storage.child("final")
    final.makedirs()
    save_file(model.state_dict(), os.path.join(final.path, "model.safetensors"))
    final.write_json("model_config.json", CFG.to_dict())
    return model, final


def _publish(storage, final, tokenizer):
    return publish(
        storage.child("registry"),
        "tiny",
        final,
        tokenizer.to_str(),
        0,
        {"loss": 3.2, "perplexity": 24.5},
        {"tokenizer_sha256": "abc"},
        {"steps": 10},
    ).model_dump(mode="json")  # as stored


def test_published_model_loads_offline_in_transformers_with_matching_logits(storage, trained, small_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, final = trained
    manifest = _publish(storage, final, small_tokenizer)
    folder = manifest["uri"]
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    text = "def main(argv):\n    return 0\n"
    ids = hf_tok(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == small_tokenizer.encode(text).ids
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.eos_token_id == 0
    with torch.no_grad():
        assert torch.allclose(hf_model(ids).logits, model(ids), atol=1e-4)
    out = hf_model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape[1] > ids.shape[1]


def test_manifest_lists_every_file_and_verify_passes(storage, trained, small_tokenizer):
    manifest = _publish(storage, trained[1], small_tokenizer)
    folder = resolve_version(storage.child("registry"), "tiny")
    assert set(manifest["files"]) == set(folder.listdir()) - {"manifest.json"}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"} <= set(
        manifest["files"]
    )
    assert verify(folder) == []
    assert "| loss | 3.2000 |" in folder.read_bytes("README.md").decode()


def test_tampered_or_missing_file_is_reported(storage, trained, small_tokenizer, capsys):
    _publish(storage, trained[1], small_tokenizer)
    folder = resolve_version(storage.child("registry"), "tiny")
    weights = bytearray(folder.read_bytes("model.safetensors"))
    weights[-1] ^= 0x01
    folder.write_bytes("model.safetensors", bytes(weights))
    folder.remove("generation_config.json")
    folder.write_bytes("extra.bin", b"x")
    assert verify(folder) == [
        "missing: generation_config.json",
        "tampered: model.safetensors (sha256 does not match the manifest)",
        "not in manifest: extra.bin",
    ]
    assert verify_main([storage.child("registry", "tiny").uri]) == 1
    assert "tampered: model.safetensors" in capsys.readouterr().out


def test_second_publish_is_a_new_version_and_moves_latest(storage, trained, small_tokenizer):
    first = _publish(storage, trained[1], small_tokenizer)
    second = _publish(storage, trained[1], small_tokenizer)
    registry = storage.child("registry")
    assert first["version"] != second["version"]
    assert sorted(registry.child("tiny").listdir()) == sorted([first["version"], second["version"], LATEST])
    assert registry.child("tiny").read_bytes(LATEST).decode().strip() == second["version"]
    assert verify(registry.child("tiny", first["version"])) == []  # older versions are kept intact


def test_generate_command_uses_latest(storage, trained, small_tokenizer):
    _publish(storage, trained[1], small_tokenizer)
    text = generate(storage.child("registry", "tiny").uri, "def ", max_new_tokens=8, temperature=0)
    assert isinstance(text, str) and len(text) > 0


def test_resolve_missing_model_is_a_clear_error(storage):
    with pytest.raises(FileNotFoundError, match="no published model"):
        resolve_version(storage.child("registry"), "nope")
