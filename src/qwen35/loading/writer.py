"""Write a random checkpoint of a Qwen3.5 shape in the official Hub layout (`qwen35 init`).

Layout: config.json (multimodal wrapper), generation_config.json, sharded `model-XXXXX-of-YYYYY.safetensors`
with `model.safetensors.index.json`, tokenizer files and chat_template.jinja, and with a vision tower the
official processor files (`preprocessor_config.json`, `video_preprocessor_config.json`). Tensor names, shapes and
on-disk dtypes come from `names.py` (fused experts, F32 `A_log` and GDN norm weight, vision tower and
MTP head included), so transformers and vLLM load it like a real release. Shards are generated and written
one at a time, so memory stays near one shard.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ModelConfig
from ..multimodal.processor_config import IMAGE_FILE, VIDEO_FILE, ProcessorConfig
from ..tokenizer import Tokenizer
from ..tokenizer.tokenizer import ENDOFTEXT
from . import names

# config.json's placeholder and marker token ids (the official files carry them; the text model reads none)
MULTIMODAL_TOKENS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                     "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
QWEN_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}  # the releases' defaults
Spec = tuple[str, tuple[int, ...], torch.dtype, str]  # name, shape, on-disk dtype, init kind


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors shard, readable as the other files are (safetensors writes it 0600, through a temporary
    file: another user or a container's user could not read the weights)."""
    save_file(tensors, str(path), metadata={"format": "pt"})
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def init_kind(name: str, shape: tuple[int, ...]) -> str:
    """How to draw a tensor: "normal" (std 0.02), "norm" (zero-centred RMSNorm: small noise around 0),
    "ones_noise" (plain-weight norms: GDN gated norm, vision LayerNorms), "a_log" (log U(1, 16)), "dt_bias",
    "conv", "zeros" (biases)."""
    if name.endswith(".bias"):
        return "zeros"
    for suffix, kind in ((".A_log", "a_log"), (".dt_bias", "dt_bias"), (".conv1d.weight", "conv"),
                         (".linear_attn.norm.weight", "ones_noise")):
        if name.endswith(suffix):
            return kind
    if len(shape) == 1:
        return "ones_noise" if name.startswith(names.VISUAL) else "norm"
    return "normal"


def checkpoint_specs(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16) -> list[Spec]:
    """Every tensor of an official checkpoint of this shape: (name, shape, on-disk dtype, init kind)."""
    return [(name, shape, torch.float32 if names.is_f32_on_disk(name) else dtype, init_kind(name, shape))
            for name, shape in names.checkpoint_tensors(cfg)]


def random_tensor(shape: tuple[int, ...], kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(shape, generator=gen) * 0.02
    if kind == "conv":
        return torch.randn(shape, generator=gen) * 0.3
    if kind == "norm":
        return torch.randn(shape, generator=gen) * 0.1
    if kind == "ones_noise":
        return 1.0 + torch.randn(shape, generator=gen) * 0.1
    if kind == "dt_bias":  # Mamba-style: softplus(dt_bias) log-uniform in [1e-3, 1e-1], as trained models have
        dt = torch.exp(torch.empty(shape).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
        return dt + torch.log(-torch.expm1(-dt))
    if kind == "a_log":
        return torch.empty(shape).uniform_(1.0, 16.0, generator=gen).log_()
    if kind == "zeros":
        return torch.zeros(shape)
    raise ValueError(f"unknown init kind {kind!r}")


def _nbytes(spec: Spec) -> int:
    n = 1
    for s in spec[1]:
        n *= s
    return n * torch.empty((), dtype=spec[2]).element_size()


def write_random_checkpoint(cfg: ModelConfig, out_dir: str | Path, seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16, shard_bytes: int = 2 << 30,
                            tokenizer: bool = True) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = checkpoint_specs(cfg, dtype)
    need, free = sum(map(_nbytes, specs)), shutil.disk_usage(out).free
    if need > free:  # refused before writing: a large preset would otherwise fill the disk, then fail
        raise OSError(f"the checkpoint needs {need / 2**30:.1f} GiB and {out} has {free / 2**30:.1f} GiB free")
    shards: list[list[Spec]] = [[]]
    size = 0
    for spec in specs:
        b = _nbytes(spec)
        if shards[-1] and size + b > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += b
    gen = torch.Generator().manual_seed(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        tensors = {s[0]: random_tensor(s[1], s[3], gen).to(s[2]) for s in shard}
        save_shard(tensors, out / name)
        for key in tensors:
            weight_map[key] = name
        total += sum(_nbytes(s) for s in shard)
        del tensors
    write_index(out, weight_map, total)
    write_metadata(cfg, out, dtype, Tokenizer.from_vocab(), tokenizer=tokenizer)
    return out


def write_index(out: Path, weight_map: dict[str, str], total_bytes: int) -> None:
    """model.safetensors.index.json: which shard holds each tensor."""
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_metadata(cfg: ModelConfig, out: Path, dtype: torch.dtype, tok: Tokenizer, tokenizer: bool = True,
                   generation: dict | None = None) -> None:
    """config.json (with the special token ids of `tok`, never literals), generation_config.json (Qwen3.5's
    sampling defaults, or the settings in `generation`), the processor files with a vision tower, and with
    `tokenizer` the tokenizer files."""
    config = cfg.to_dict()
    config["text_config"]["dtype"] = str(dtype).removeprefix("torch.")
    eot = tok.token_to_id(ENDOFTEXT)
    config["text_config"]["eos_token_id"] = eot
    config.update({key: tok.token_to_id(token) for key, token in MULTIMODAL_TOKENS.items()})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    settings = {"bos_token_id": eot, "eos_token_id": [tok.eos_token_id, eot], "pad_token_id": tok.pad_token_id}
    settings.update(generation or QWEN_SAMPLING)
    (out / "generation_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    if cfg.vision is not None:
        _write_processor_files(cfg, out)
    if tokenizer:
        tok.save(out)


def _write_processor_files(cfg: ModelConfig, out: Path) -> None:
    """The official Qwen3.5 processor files, with the tower's patch geometry (which the official values are)."""
    vision = cfg.vision
    proc = ProcessorConfig(patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
                           merge_size=vision.spatial_merge_size)
    (out / IMAGE_FILE).write_text(json.dumps(proc.image_processor_dict(), indent=2) + "\n")
    (out / VIDEO_FILE).write_text(json.dumps(proc.video_processor_dict(), indent=2) + "\n")
