"""Block-FP8 quantisation of a BF16/FP32 checkpoint, in the layout of the official `Qwen/Qwen3.5-*-FP8`
releases (docs/MODEL.md §7).

For each quantised linear `X.weight` [out, in] the copy holds `X.weight` as F8_E4M3 and `X.weight_scale_inv`
as F32 [ceil(out/b0), ceil(in/b1)], with `W ≈ W_fp8 · scale_inv` blockwise (scale_inv = block amax / 448).
What is quantised is `names.QUANTISED` (the text layers' big projections) plus the routed experts, which are
written per expert (`names.split_fused_experts`: the fused `gate_up_proj` [E, 2I, H] split gate rows first).
Everything else (embeddings, lm_head, norms, conv1d, A_log, dt_bias, in_proj_a/b, the router `mlp.gate`,
`shared_expert_gate`, the vision tower and the MTP head) is copied unchanged.

The inverse is `qwen35.model.linear.dequantize_fp8`. Shards are converted one at a time, so memory stays
near the size of one source shard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .names import SCALE, is_quantised, split_fused_experts

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448.0


def quantize_block_fp8(w: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] weight -> (F8_E4M3 weight [out, in], F32 scale_inv [ceil(out/b0), ceil(in/b1)])."""
    if w.dim() != 2:
        raise ValueError(f"block FP8 needs a 2-D weight, got shape {tuple(w.shape)}")
    out, inp = w.shape
    b0, b1 = block
    no, ni = -(-out // b0), -(-inp // b1)
    padded = torch.zeros(no * b0, ni * b1, dtype=torch.float32)
    padded[:out, :inp] = w.float()
    blocks = padded.view(no, b0, ni, b1)
    amax = blocks.abs().amax(dim=(1, 3))  # [no, ni]
    scale = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    q = q.view(no * b0, ni * b1)[:out, :inp].contiguous()
    return q, scale.contiguous()


def _convert(name: str, tensor: torch.Tensor, block: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The output tensors for one source tensor: fused experts split per expert, then quantised."""
    experts = split_fused_experts(name, tensor)
    if experts is not None:
        out: dict[str, torch.Tensor] = {}
        for key, w in experts.items():
            out[key], out[key + SCALE] = quantize_block_fp8(w, block)
        return out
    if tensor.dim() == 2 and is_quantised(name):
        q, s = quantize_block_fp8(tensor, block)
        return {name: q, name + SCALE: s}
    return {name: tensor}


def _source_shards(src: Path) -> list[str]:
    index = src / "model.safetensors.index.json"
    if index.exists():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (src / "model.safetensors").exists():
        return ["model.safetensors"]
    raise FileNotFoundError(f"{src} has neither model.safetensors nor model.safetensors.index.json")


def quantize_checkpoint_fp8(src_dir: str | Path, dst_dir: str | Path,
                            block: tuple[int, int] = (128, 128)) -> Path:
    """Write a block-FP8 copy of checkpoint `src_dir` into `dst_dir` (created); returns `dst_dir`."""
    src, dst = Path(src_dir), Path(dst_dir)
    block = (int(block[0]), int(block[1]))
    if src.resolve() == dst.resolve():
        raise ValueError("quantize_checkpoint_fp8 needs a destination other than the source")
    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    not_converted: set[str] = set()
    total = 0
    for shard in _source_shards(src):
        with safe_open(str(src / shard), framework="pt") as f:
            metadata = f.metadata() or {"format": "pt"}
            out: dict[str, torch.Tensor] = {}
            for key in f.keys():
                converted = _convert(key, f.get_tensor(key), block)
                out.update(converted)
                if len(converted) == 1 and key.endswith(".weight") and converted[key].dim() >= 2:
                    not_converted.add(key[: -len(".weight")])
        save_file(out, str(dst / shard), metadata=metadata)
        for key, t in out.items():
            weight_map[key] = shard
            total += t.numel() * t.element_size()
        del out
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
        "modules_to_not_convert": sorted(not_converted),
    }
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for item in src.iterdir():  # tokenizer, generation config, chat template, ...
        if item.is_file() and item.name not in ("config.json", "model.safetensors.index.json") \
                and not item.name.endswith(".safetensors"):
            shutil.copy2(item, dst / item.name)
    return dst


__all__ = ["quantize_checkpoint_fp8", "quantize_block_fp8", "is_quantised", "FP8_MAX"]
