"""The model's shape as data: sizes, presets, parameter and FLOP counts. No torch here, so the
configs that name a model (and the Dagster definitions that validate them) load without it."""

from __future__ import annotations

from pydantic import Field, model_validator

from llm_pipeline.settings import Settings


class ModelConfig(Settings):
    # Bounds far past any model in use (vocabularies reach ~262K, widths ~25K), so a mistyped or
    # hostile config is refused by name here instead of as an allocation of petabytes.
    vocab_size: int = Field(gt=0, le=1 << 24, description="token ids 0..vocab_size-1 (the tokenizer's)")
    d_model: int = Field(default=192, gt=0, le=1 << 16, description="width (hidden size)")
    n_layers: int = Field(default=4, gt=0, le=1 << 10, description="decoder blocks")
    n_heads: int = Field(default=6, gt=0, le=1 << 10, description="attention heads; must divide d_model")
    ffn_hidden: int = Field(default=512, gt=0, le=1 << 18, description="SwiGLU hidden size")
    max_seq_len: int = Field(default=256, gt=0, le=1 << 21, description="longest sequence the rotary tables cover")
    rope_theta: float = Field(default=10000.0, gt=0, description="rotary embedding base")
    norm_eps: float = Field(default=1e-5, gt=0, description="RMSNorm epsilon")

    @model_validator(mode="after")
    def _heads_split_the_width(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"model head size d_model/n_heads = {self.d_model // self.n_heads} must be even for rotary embeddings")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_dict(cls, values: object, source: str) -> ModelConfig:
        """From a saved model_config.json's contents; ValueError naming `source` if they are not one."""
        if not isinstance(values, dict):
            raise ValueError(f"{source} is not a valid model config: a JSON object expected, got {type(values).__name__}")
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{source} is not a valid model config: {e}") from None

    def num_params(self) -> int:
        d, f, v = self.d_model, self.ffn_hidden, self.vocab_size
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        return 2 * v * d + self.n_layers * per_layer + d

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), PaLM appendix B accounting."""
        non_embedding = self.num_params() - self.vocab_size * self.d_model
        return 6 * non_embedding + 12 * self.n_layers * self.d_model * seq_len


# Model sizes by name (vocab_size comes from the tokenizer). "demo" is what `make demo` trains.
PRESETS: dict[str, dict] = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, ffn_hidden=128, max_seq_len=256),
    "demo": dict(d_model=192, n_layers=4, n_heads=6, ffn_hidden=512, max_seq_len=256),
    "125m": dict(d_model=768, n_layers=12, n_heads=12, ffn_hidden=2048, max_seq_len=1024),
    "350m": dict(d_model=1024, n_layers=24, n_heads=16, ffn_hidden=2816, max_seq_len=2048),
    "1b": dict(d_model=2048, n_layers=16, n_heads=32, ffn_hidden=5632, max_seq_len=2048),
}


def preset_config(name: str, vocab_size: int, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"model preset must be one of {sorted(PRESETS)}, got {name!r}")
    return ModelConfig(vocab_size=vocab_size, **{**PRESETS[name], **overrides})
