"""A Llama-style decoder: RMSNorm, rotary embeddings, SwiGLU, PyTorch SDPA attention.

Parameter names match Hugging Face `LlamaForCausalLM`, so the exported state dict loads there
unchanged and gives the same logits. Nothing here knows about parallelism.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from llm_pipeline.settings import Settings


class ModelConfig(Settings):
    vocab_size: int = Field(gt=0, description="token ids 0..vocab_size-1 (the tokenizer's)")
    d_model: int = Field(default=192, gt=0, description="width (hidden size)")
    n_layers: int = Field(default=4, gt=0, description="decoder blocks")
    n_heads: int = Field(default=6, gt=0, description="attention heads; must divide d_model")
    ffn_hidden: int = Field(default=512, gt=0, description="SwiGLU hidden size")
    max_seq_len: int = Field(default=256, gt=0, description="longest sequence the rotary tables cover")
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


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the compute dtype, as HF Llama does.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    freqs = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    """HF's `LlamaModel` part: named `model` in the full network."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = DecoderStack(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # Scaled init of residual projections (GPT-2): keeps the residual stream's variance flat in depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The final normed hidden state of every position (what lm_head reads)."""
        t = idx.shape[1]
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds the model's max_seq_len {self.cfg.max_seq_len}")
        cos, sin = rotary_cos_sin(t, self.cfg.head_dim, self.cfg.rope_theta, idx.device)
        x = self.model.embed_tokens(idx)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.lm_head(self.hidden_states(idx))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        stop_id: int | None = None,
    ) -> torch.Tensor:
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.cfg.max_seq_len :])[:, -1, :].float()
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
            if stop_id is not None and bool((nxt == stop_id).all()):
                break
        return idx
