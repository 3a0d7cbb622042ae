"""Activation checkpointing, applied from outside the model: each decoder layer recomputes its
activations in the backward pass instead of keeping them, trading compute for memory.

torch's own wrapper: the model code stays untouched. The wrapped layers' parameter names gain a
`_checkpoint_wrapped_module.` part, which torch strips from `state_dict()`; DeepSpeed's ZeRO
checkpoints record the wrapped names, and `plain_names` strips them when the weights are exported.
"""

from __future__ import annotations

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    _CHECKPOINT_PREFIX,
    CheckpointImpl,
    checkpoint_wrapper,
)
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    apply_activation_checkpointing as wrap_modules,
)

from llm_pipeline.train.model import CausalLM, DecoderLayer


def apply_activation_checkpointing(model: CausalLM) -> CausalLM:
    wrap_modules(
        model,
        checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: isinstance(m, DecoderLayer),
    )
    return model


def plain_names(state_dict: dict) -> dict:
    """The model's own parameter names, whether or not its layers were wrapped."""
    return {name.replace(_CHECKPOINT_PREFIX, ""): value for name, value in state_dict.items()}
