"""Activation checkpointing, applied from outside the model: each decoder layer recomputes its
activations in the backward pass instead of keeping them, trading compute for memory."""

from __future__ import annotations

import functools

from torch.utils.checkpoint import checkpoint

from llm_pipeline.train.model import CausalLM


def apply_activation_checkpointing(model: CausalLM) -> CausalLM:
    for layer in model.model.layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    return model
