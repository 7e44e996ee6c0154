"""Write a trained model in the official checkpoint layout: one bf16 safetensors shard (A_log and the GDN norm
weight F32, as on the Hub) with its index, config.json without a vision tower, generation_config.json, and the
trained tokenizer with the Qwen3.5 chat template. Our loader and transformers load it like a release.
`read_trained` puts such a checkpoint's weights back into a training model (a recipe's polish starts there)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import ModelConfig
from ..loading import names
from ..loading.writer import save_shard, write_index, write_metadata
from ..model.qwen35 import Qwen35ForCausalLM
from ..tokenizer import Tokenizer
from .recipe import Recipe

SHARD = "model-00001-of-00001.safetensors"
# the demo answers deterministically by default: greedy is what its training data shows
GENERATION = {"do_sample": False}


def checkpoint_name(param: str) -> str:
    """Our parameter name -> the official tensor name (`model.x` -> `model.language_model.x`; `mtp.*` as is)."""
    if param.startswith(names.TEXT_ONLY):
        return names.LM + param[len(names.TEXT_ONLY):]
    return param


def write_trained(model: Qwen35ForCausalLM, tok: Tokenizer, recipe: Recipe, out_dir: str | Path,
                  dtype: torch.dtype = torch.bfloat16) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for param, value in model.state_dict().items():
        if param == names.LM_HEAD and model.cfg.tie_word_embeddings:
            continue
        name = checkpoint_name(param)
        tensors[name] = value.detach().to(torch.float32 if names.is_f32_on_disk(name) else dtype).contiguous()
    save_shard(tensors, out / SHARD)
    write_index(out, dict.fromkeys(tensors, SHARD), sum(t.numel() * t.element_size() for t in tensors.values()))
    write_metadata(ModelConfig(text=model.cfg), out, dtype, tok, generation=GENERATION)
    return out


def read_trained(model: Qwen35ForCausalLM, model_dir: str | Path) -> Qwen35ForCausalLM:
    """Copy the weights `write_trained` wrote in `model_dir` into `model` (of the same shape), widened to the
    model's dtype: the exported model, bf16 rounding included. A missing or misshapen tensor is an error."""
    tensors = load_file(str(Path(model_dir) / SHARD))
    with torch.no_grad():
        for param, value in model.state_dict().items():
            if param == names.LM_HEAD and model.cfg.tie_word_embeddings:
                continue
            name = checkpoint_name(param)
            if name not in tensors or tensors[name].shape != value.shape:
                got = tuple(tensors[name].shape) if name in tensors else "nothing"
                raise ValueError(f"{model_dir}: {name} should be {tuple(value.shape)}, found {got}")
            value.copy_(tensors[name])
    return model
