"""Streaming load of a Hugging Face Qwen3.5 checkpoint into `Qwen35ForCausalLM`.

The model is built on the meta device, then every tensor is read from its memory-mapped shard, cast and
assigned one at a time, so peak memory stays near the size of the weights in the target dtype.
fp32 is kept for the tensors the numerics need (`A_log`, `dt_bias`, the GDN gated-norm weight).
Vision and MTP tensors are skipped deliberately and reported; anything else unknown, missing, or of the
wrong shape is a `CheckpointError` naming the tensor and the file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from ..config import ModelConfig
from ..model.linear import FP8Linear, Linear, dequantize_fp8
from ..model.qwen35 import Qwen35ForCausalLM
from .names import map_name

log = logging.getLogger("qwen35.loading")

FP32_SUFFIXES = (".A_log", ".dt_bias", ".linear_attn.norm.weight")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as the config describes."""


def shard_files(path: Path) -> dict[str, list[str]]:
    """Map each shard file to the tensor names it should hold (from the index, or the single file)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from None
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(file, []).append(name)
        missing = sorted(f for f in files if not (path / f).exists())
        if missing:
            raise CheckpointError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
        return files
    single = path / "model.safetensors"
    if single.exists():
        return {single.name: []}
    raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json")


def _open(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt headers
        raise CheckpointError(f"cannot read {file}: {e} (truncated or not a safetensors file?)") from None


class _Loader:
    def __init__(self, model: Qwen35ForCausalLM, cfg: ModelConfig, dtype: torch.dtype, device) -> None:
        self.model, self.cfg, self.dtype, self.device = model, cfg, dtype, device
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.expected = set(self.params)
        if cfg.text.tie_word_embeddings:
            self.expected.discard("lm_head.weight")
        self.loaded: set[str] = set()
        self.skipped: Counter[str] = Counter()
        self.expert_parts: set[tuple[str, int, str]] = set()
        self.pending_scales: dict[str, tuple[torch.Tensor, str]] = {}
        self.pending_fp8: dict[str, tuple[torch.Tensor, str]] = {}

    # -- assignment -------------------------------------------------------------------------------
    def _target_dtype(self, name: str) -> torch.dtype:
        return torch.float32 if name.endswith(FP32_SUFFIXES) else self.dtype

    def _set_param(self, name: str, tensor: torch.Tensor, file: str) -> None:
        if name not in self.params:
            raise CheckpointError(f"unexpected tensor {name!r} in {file}")
        if name == "lm_head.weight" and self.cfg.text.tie_word_embeddings:
            self.skipped["lm_head (tied to embed_tokens)"] += 1
            return
        shape = tuple(self.params[name].shape)
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"tensor {name!r} in {file} has shape {tuple(tensor.shape)}, expected {shape}")
        module_name, attr = name.rsplit(".", 1)
        module = self.model.get_submodule(module_name)
        value = tensor.to(device=self.device, dtype=self._target_dtype(name))
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
        self.loaded.add(name)

    def _set_fp8(self, weight_name: str, weight: torch.Tensor, scale: torch.Tensor, file: str) -> None:
        module_name = weight_name.rsplit(".", 1)[0]
        if weight_name not in self.params:
            raise CheckpointError(f"unexpected FP8 tensor {weight_name!r} in {file}")
        module = self.model.get_submodule(module_name)
        if not isinstance(module, Linear):
            raise CheckpointError(f"{weight_name!r} in {file} is FP8 but {module_name} is not a linear layer")
        if (module.out_features, module.in_features) != tuple(weight.shape):
            raise CheckpointError(f"tensor {weight_name!r} in {file} has shape {tuple(weight.shape)}, "
                                  f"expected {(module.out_features, module.in_features)}")
        parent_name, child = module_name.rsplit(".", 1)
        try:
            fp8 = FP8Linear(weight.to(self.device), scale.to(self.device), self.cfg.quant.weight_block_size,
                            self.dtype)
        except ValueError as e:
            raise CheckpointError(f"{weight_name!r} in {file}: {e}") from None
        setattr(self.model.get_submodule(parent_name), child, fp8)
        self.loaded.add(weight_name)

    def _set_expert(self, stacked: str, expert: int, proj: str, tensor: torch.Tensor, file: str) -> None:
        gate_up, down = self.params[stacked + ".gate_up_proj"], self.params[stacked + ".down_proj"]
        E, two_i, _ = gate_up.shape
        inter = two_i // 2
        if not 0 <= expert < E:
            raise CheckpointError(f"expert {expert} of {stacked!r} in {file} is out of range (num_experts={E})")
        for full in (stacked + ".gate_up_proj", stacked + ".down_proj"):  # materialise on first use
            p = self.params[full]
            if p.is_meta:
                mod_name, attr = full.rsplit(".", 1)
                new = nn.Parameter(torch.zeros(p.shape, dtype=self.dtype, device=self.device), requires_grad=False)
                self.model.get_submodule(mod_name)._parameters[attr] = new
                self.params[full] = new
        gate_up, down = self.params[stacked + ".gate_up_proj"], self.params[stacked + ".down_proj"]
        dst = {"gate_proj": gate_up[expert, :inter], "up_proj": gate_up[expert, inter:], "down_proj": down[expert]}[proj]
        if tuple(tensor.shape) != tuple(dst.shape):
            raise CheckpointError(f"expert tensor {stacked}.{expert}.{proj} in {file} has shape "
                                  f"{tuple(tensor.shape)}, expected {tuple(dst.shape)}")
        dst.copy_(tensor.to(self.dtype))
        self.expert_parts.add((stacked, expert, proj))

    # -- one tensor -------------------------------------------------------------------------------
    def take(self, key: str, tensor: torch.Tensor, file: str) -> None:
        target = map_name(key)
        if target is None:
            raise CheckpointError(f"unexpected tensor {key!r} in {file}: not a Qwen3.5 checkpoint name")
        if target.kind == "skip":
            self.skipped[target.name] += 1
        elif target.kind == "param":
            if tensor.dtype == torch.float8_e4m3fn:
                self._pair_fp8(target.name, tensor, None, file)
            else:
                self._set_param(target.name, tensor, file)
        elif target.kind == "scale":
            self._pair_fp8(target.name, None, tensor, file)
        else:  # expert / expert_scale
            ident = f"{target.name}.{target.expert}.{target.proj}.weight"
            if target.kind == "expert" and tensor.dtype != torch.float8_e4m3fn:
                self._set_expert(target.name, target.expert, target.proj, tensor, file)
            else:
                w = tensor if target.kind == "expert" else None
                s = tensor if target.kind == "expert_scale" else None
                self._pair_fp8(ident, w, s, file, expert=(target.name, target.expert, target.proj))

    def _pair_fp8(self, weight_name: str, weight, scale, file: str, expert=None) -> None:
        """FP8 weights and their scales may sit in different shards; join them when both are seen."""
        if weight is not None:
            other = self.pending_scales.pop(weight_name, None)
            if other is None:
                self.pending_fp8[weight_name] = (weight, file)
                return
            scale = other[0]
        else:
            other = self.pending_fp8.pop(weight_name, None)
            if other is None:
                self.pending_scales[weight_name] = (scale, file)
                return
            weight = other[0]
        if self.cfg.quant is None:
            raise CheckpointError(f"{weight_name!r} in {file} is FP8 but config.json has no quantization_config")
        if expert is not None:  # routed experts are dequantised into the stacked tensors
            w = dequantize_fp8(weight, scale, self.cfg.quant.weight_block_size, self.dtype)
            self._set_expert(*expert, w, file)
        else:
            self._set_fp8(weight_name, weight, scale, file)

    # -- the end ----------------------------------------------------------------------------------
    def finish(self) -> None:
        for name, (_, file) in list(self.pending_fp8.items()) + list(self.pending_scales.items()):
            raise CheckpointError(f"FP8 tensor {name!r} in {file} has no matching weight/weight_scale_inv")
        cfg = self.cfg.text
        for stacked in {s for s, _, _ in self.expert_parts}:
            want = {(stacked, e, p) for e in range(cfg.num_experts) for p in ("gate_proj", "up_proj", "down_proj")}
            lacking = sorted(want - self.expert_parts)
            if lacking:
                s, e, p = lacking[0]
                raise CheckpointError(f"checkpoint lacks {len(lacking)} per-expert tensors, e.g. {s}.{e}.{p}.weight")
            self.loaded.update({stacked + ".gate_up_proj", stacked + ".down_proj"})
        missing = sorted(self.expected - self.loaded)
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s): {', '.join(missing[:5])}{more}")
        for what, n in sorted(self.skipped.items()):
            log.info("skipped %d %s tensor(s): not used by the text model", n, what)


def load_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               progress: bool | None = None) -> tuple[Qwen35ForCausalLM, ModelConfig]:
    """Load `path` (a checkpoint directory) as a ready-to-run model in eval mode."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    cfg = ModelConfig.from_file(path)
    files = shard_files(path)
    with torch.device("meta"):
        model = Qwen35ForCausalLM(cfg.text)
    loader = _Loader(model, cfg, dtype, device)
    total = sum((path / f).stat().st_size for f in files)
    disable = None if progress is None else not progress  # None: show only on a terminal
    with tqdm(total=total, unit="B", unit_scale=True, desc="loading", disable=disable, leave=False) as bar:
        for file in sorted(files):
            with _open(path / file) as f:
                keys = list(f.keys())
                absent = sorted(set(files[file]) - set(keys))
                if absent:
                    raise CheckpointError(f"{path / file} lacks {absent[0]!r} that the index places there")
                for key in keys:
                    try:
                        tensor = f.get_tensor(key)
                    except Exception as e:
                        raise CheckpointError(f"cannot read tensor {key!r} from {path / file}: {e}") from None
                    loader.take(key, tensor, str(path / file))
                    bar.update(tensor.numel() * tensor.element_size())
                    del tensor
    loader.finish()
    if cfg.text.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # buffers built on meta (rotary inverse frequencies) are recomputed on the target device
    model.model.rotary = type(model.model.rotary)(cfg.text.rope, cfg.text.rotary_dim,
                                                  cfg.text.max_position_embeddings).to(device)
    model.eval()
    return model, cfg
