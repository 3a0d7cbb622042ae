"""Our ModelConfig as a Hugging Face `LlamaConfig` (config.json) and back: the parameter names
already match `LlamaForCausalLM` (model.py), so this mapping is all a published folder needs."""

from __future__ import annotations

from llm_pipeline.train.model_config import ModelConfig


def hf_config(cfg: ModelConfig, eos_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }


def model_config_from_hf(config: dict) -> ModelConfig:
    """The inverse of hf_config, for reading a published folder back into our model class."""
    if config.get("model_type") != "llama":
        raise ValueError(f"expected a llama config.json, got model_type {config.get('model_type')!r}")
    return ModelConfig(
        vocab_size=config["vocab_size"],
        d_model=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=config["num_attention_heads"],
        ffn_hidden=config["intermediate_size"],
        max_seq_len=config["max_position_embeddings"],
        rope_theta=config["rope_theta"],
        norm_eps=config["rms_norm_eps"],
    )
