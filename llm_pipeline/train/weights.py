"""A model's weights from storage: a final checkpoint (`model.safetensors` + `model_config.json`) or a
published folder, into our model class. Used by the trainer (continued pretraining), evaluation and
publishing alike, so it lives with the model."""

from __future__ import annotations

import os
import tempfile

import torch
from safetensors.torch import load_file

from llm_pipeline.storage.folders import Storage
from llm_pipeline.train.hardware import device_for, on_gpu
from llm_pipeline.train.model import CausalLM
from llm_pipeline.train.model_config import ModelConfig


def load_model(folder: Storage, cfg: ModelConfig, dtype: str = "fp32") -> CausalLM:
    """Weights from `<folder>/model.safetensors` (local or remote) into our model class, for inference: on the GPU
    if there is one, in `dtype` (fp32 or bf16)."""
    model = CausalLM(cfg)
    load_weights(model, folder)
    return model.to(device_for(0, on_gpu()), torch.bfloat16 if dtype == "bf16" else torch.float32).eval()


def load_weights(model: CausalLM, folder: Storage) -> None:
    """`<folder>/model.safetensors` (a final checkpoint or a published model) into `model`, strictly."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        folder.get_file("model.safetensors", path)
        try:
            model.load_state_dict(load_file(path), strict=True)
        except Exception as e:  # noqa: BLE001 - safetensors' and torch's errors say nothing of where
            raise ValueError(f"{folder.uri}/model.safetensors cannot be loaded into the model: {type(e).__name__}: {e}") from None


def load_trained_model(final: Storage, dtype: str = "fp32") -> CausalLM:
    return load_model(final, ModelConfig.from_dict(final.read_json("model_config.json"), f"{final.uri}/model_config.json"), dtype)
