"""Streaming load of a Hugging Face Qwen3.5 checkpoint into `Qwen35ForCausalLM`.

The model is built on the meta device, then every tensor is read from its shard straight into a buffer of
the target dtype (casting through a small bounce buffer when the dtypes differ) and assigned one at a time,
so peak memory stays near the size of the weights in the target dtype. Shards are read with plain file
reads, not memory-mapped: pages of a mapped shard count towards the process's resident memory until the
shard is closed, which made an fp32 load of a bf16 checkpoint peak at 1.5x the weights.
fp32 is kept for the tensors the numerics need (`A_log`, `dt_bias`, the GDN gated-norm weight).
Checkpoint names are resolved by `names.map_name` (the one description of the official layout).
Vision tensors unless `vision=True` and MTP tensors unless `mtp=True` are skipped deliberately and reported;
anything else unknown, missing, or of the wrong shape is a `CheckpointError` naming the tensor and the file.
The vision tower (`visual.*`) stays in the load dtype whatever the quantisation: the quantiser, `fuse` and
`prepack` see only the decoder, the MTP head and the lm_head (the tower's layers run thousands of rows per call,
where oneDNN's packed layout gains nothing), and a block-FP8 tower weight is dequantised at load.
With `quantization="int8"|"int4"`, or a GPTQ/AWQ checkpoint (converted by loading/gptq.py), each decoder layer
is finalised (fused, quantised, prepacked: loading/quantize.py) as soon as its last tensor is in, so the
bf16 copy of at most a layer or so is alive beside the quantised model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError, ModelConfig
from ..model.linear import FP8Linear, Linear, QuantLinear, dequantize_fp8
from ..model.moe import Experts, QuantExperts
from ..model.qwen35 import Qwen35ForCausalLM
from ..ops import quant
from . import gptq
from ..parallel.sharding import Shard, Slice
from .names import (EXPERT_PROJS, LM_HEAD, MTP, SCALE, TOWER, Target, checkpoint_tensors, is_quantised, map_name,
                    parse)
from .quantize import Quantizer, choose_kernels, release_free_memory, resolve

log = logging.getLogger("qwen35.loading")

FP32_SUFFIXES = (".A_log", ".dt_bias", ".linear_attn.norm.weight")
EMBED = "model.embed_tokens.weight"
_LAYER_PARAM = re.compile(r"^model\.layers\.(\d+)\.")


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


_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
           "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
           "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_MAX_HEADER = 100 << 20  # the safetensors format's own limit
_CHUNK = 4 << 20  # bounce buffer for dtype conversion


class _Shard:
    """One safetensors file, read with plain file reads (see the module docstring for why not mmap)."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._bounce: torch.Tensor | None = None
        try:
            self._f = open(file, "rb")
        except OSError as e:
            raise CheckpointError(f"cannot open {file}: {e}") from None
        try:
            self._parse_header()
        except BaseException:
            self._f.close()
            raise

    def _parse_header(self) -> None:
        file = self.file
        size = os.fstat(self._f.fileno()).st_size
        head = self._f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"cannot read {file}: its header is incomplete ({size} bytes on disk; "
                                  "truncated or not a safetensors file?)")
        try:
            header = json.loads(self._f.read(n))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(f"cannot read {file}: not a safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}
        for name, info in header.items():
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except KeyError as e:
                raise CheckpointError(f"cannot read tensor {name!r} from {file}: unsupported or missing "
                                      f"header field {e}") from None
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"cannot read tensor {name!r} from {file}: bad header entry ({e})") from None
            nbytes = math.prod(shape) * dtype.itemsize
            if begin < 0 or end - begin != nbytes or any(d < 0 for d in shape):
                raise CheckpointError(f"cannot read tensor {name!r} from {file}: header gives {end - begin} bytes "
                                      f"for shape {shape} of {info['dtype']}")
            if self.base + end > size:
                raise CheckpointError(f"{file} is truncated: tensor {name!r} ends at byte {self.base + end} "
                                      f"but the file has {size} bytes")
            self.entries[name] = (dtype, shape, begin)

    def keys(self) -> list[str]:
        """Tensor names in file order (sequential reads)."""
        return sorted(self.entries, key=lambda k: self.entries[k][2])

    def tensor(self, name: str) -> "_Stored":
        dtype, shape, offset = self.entries[name]
        return _Stored(self, name, dtype, shape, self.base + offset)

    def _read_into(self, buf: torch.Tensor, name: str) -> None:
        view = memoryview(buf.numpy()).cast("B")
        done = 0
        while done < len(view):
            got = self._f.readinto(view[done:])
            if not got:
                raise CheckpointError(f"cannot read tensor {name!r} from {self.file}: file ended early (truncated?)")
            done += got

    def bounce(self, nbytes: int) -> torch.Tensor:
        """One reusable conversion buffer per shard (a fresh one per tensor fragmented the heap: +10% RSS)."""
        if self._bounce is None or self._bounce.numel() < nbytes:
            self._bounce = torch.empty(nbytes, dtype=torch.uint8)
        return self._bounce

    def close(self) -> None:
        self._bounce = None
        self._f.close()

    def __enter__(self) -> "_Shard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Stored:
    """A tensor in a shard, not yet read: dtype and shape are known, `load` reads it."""

    def __init__(self, shard: _Shard, name: str, dtype: torch.dtype, shape: tuple[int, ...], pos: int) -> None:
        self.shard, self.name, self.dtype, self.shape, self.pos = shard, name, dtype, shape, pos

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def load(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read the tensor, cast to `dtype`, with no full-size intermediate copy."""
        out = torch.empty(self.shape, dtype=dtype or self.dtype)
        self.read_into(self.pos, out.view(-1))
        return out

    def read_into(self, pos: int, flat: torch.Tensor) -> None:
        """Read flat.numel() elements of this tensor stored from byte `pos` into `flat` (contiguous), casting
        through the shard's bounce buffer when the dtypes differ."""
        n = flat.numel()
        if n == 0:
            return
        self.shard._f.seek(pos)
        if flat.dtype == self.dtype:
            self.shard._read_into(flat.view(torch.uint8), self.name)
            return
        size = self.dtype.itemsize
        per = max(1, _CHUNK // size)
        buf = self.shard.bounce(per * size)
        for start in range(0, n, per):
            k = min(per, n - start)
            chunk = buf[: k * size]
            self.shard._read_into(chunk, self.name)
            flat[start:start + k].copy_(chunk.view(self.dtype))


class _Sliced:
    """A rank's part of a stored tensor (parallel/sharding.py `Slice`), not yet read. Parts that are whole
    rows of the tensor (a split along dimension 0, or large pieces) are the only bytes read; a split along
    a later dimension into small pieces (row-parallel weights) streams the tensor through the shard's bounce
    buffer and keeps only the pieces. Either way the rank never holds more than its part."""

    PIECE = 256 << 10  # pieces at least this large are read on their own

    def __init__(self, stored: _Stored, part: Slice) -> None:
        self.stored, self.part = stored, part
        self.name, self.dtype = stored.name, stored.dtype
        self.shape = part.shape(stored.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def load(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        st, part = self.stored, self.part
        dtype = dtype or st.dtype
        out = torch.zeros(self.shape, dtype=dtype)  # zeros: a padded vocabulary's last rows
        d = part.dim
        outer, n, inner = math.prod(st.shape[:d]), st.shape[d], math.prod(st.shape[d + 1:])
        size = st.dtype.itemsize
        dst = out.view(outer, part.size, inner)
        smallest = min(b - a for a, b in part.ranges) * inner * size
        if outer == 1 or smallest >= self.PIECE:
            for o in range(outer):
                at = 0
                for a, b in part.ranges:
                    st.read_into(st.pos + ((o * n + a) * inner) * size, dst[o, at:at + b - a].view(-1))
                    at += b - a
            return out
        row = n * inner * size
        rows = max(1, _CHUNK // row)
        for o in range(0, outer, rows):
            k = min(rows, outer - o)
            buf = st.shard.bounce(k * row)[:k * row]
            st.shard._f.seek(st.pos + o * row)
            st.shard._read_into(buf, self.name)
            src = buf.view(st.dtype).view(k, n, inner)
            at = 0
            for a, b in part.ranges:
                dst[o:o + k, at:at + b - a].copy_(src[:, a:b])
                at += b - a
        return out


class _Loader:
    def __init__(self, model: Qwen35ForCausalLM, cfg: ModelConfig, dtype: torch.dtype, device,
                 quantizer: Quantizer | None = None) -> None:
        self.model, self.cfg, self.dtype, self.device = model, cfg, dtype, device
        self.shard: Shard = model.shard
        self.first_expert, end = self.shard.experts
        self.held_experts = end - self.first_expert
        self.quantizer = quantizer  # None: fuse and prepack at the end, as before
        self.mtp = model.mtp is not None
        self.vision = model.visual is not None
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.expected = set(self.params)
        if cfg.text.tie_word_embeddings:
            self.expected.discard(LM_HEAD)
        self.loaded: set[str] = set()
        self.skipped: Counter[str] = Counter()
        self.expert_parts: set[tuple[str, int, str]] = set()
        self.pending_scales: dict[str, tuple[torch.Tensor, str]] = {}
        self.pending_fp8: dict[str, tuple[torch.Tensor, str]] = {}
        self.expert_count: Counter[str] = Counter()
        # units finalised while loading (quantizer only): decoder layers, and the embedding/lm_head
        self.layer_names: dict[int, set[str]] = {}
        for name in self.expected:
            m = _LAYER_PARAM.match(name)
            if m:
                self.layer_names.setdefault(int(m.group(1)), set()).add(name)
        self.done_layers: set[int] = set()
        self.head_done = False
        method = cfg.quant.method if cfg.quant is not None else None
        self.int4_method = method if method in ("gptq", "awq") else None
        self.all_keys: set[str] = set()  # every tensor name of the checkpoint (GPTQ/AWQ: which parts to wait for)
        self.gptq_pending: dict[str, dict[str, torch.Tensor]] = {}

    # -- finalising units while loading -----------------------------------------------------------------
    def _mark(self, name: str) -> None:
        """`name` is loaded; with a quantizer, finalise its unit once the unit is complete."""
        self.loaded.add(name)
        if self.quantizer is None:
            return
        m = _LAYER_PARAM.match(name)
        if m:
            i = int(m.group(1))
            if i not in self.done_layers and self.layer_names[i] <= self.loaded:
                self.done_layers.add(i)
                prefix = f"model.layers.{i}."
                for n in [n for n in self.params if n.startswith(prefix)]:
                    del self.params[n]  # the originals must be freeable once quantised
                self.quantizer.finalize(self.model.model.layers[i], prefix)
        elif name in (EMBED, LM_HEAD) and not self.head_done:
            tied = self.cfg.text.tie_word_embeddings
            if (EMBED if tied else LM_HEAD) in self.loaded and (tied or isinstance(self.model.lm_head, Linear)):
                self.head_done = True
                if tied:
                    self.model.lm_head.weight = self.model.model.embed_tokens.weight
                self.quantizer.quantize_head(self.model)
                for n in (EMBED, LM_HEAD) if tied else (LM_HEAD,):
                    self.params.pop(n, None)

    # -- assignment -------------------------------------------------------------------------------
    def _target_dtype(self, name: str) -> torch.dtype:
        return torch.float32 if name.endswith(FP32_SUFFIXES) else self.dtype

    def _set_param(self, name: str, tensor: "_Stored", file: str) -> None:
        if name not in self.params:
            raise CheckpointError(f"unexpected tensor {name!r} in {file}")
        if name == LM_HEAD and self.cfg.text.tie_word_embeddings:
            self.skipped["lm_head (tied to embed_tokens)"] += 1
            return
        shape = tuple(self.params[name].shape)
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"tensor {name!r} in {file} has shape {tuple(tensor.shape)}, expected {shape}")
        if not tensor.dtype.is_floating_point:  # quantised weights load elsewhere; this one holds numbers to use
            raise CheckpointError(f"tensor {name!r} in {file} is {str(tensor.dtype).removeprefix('torch.')}, "
                                  "expected a floating-point weight")
        module_name, attr = name.rsplit(".", 1)
        module = self.model.get_submodule(module_name)
        value = tensor.load(self._target_dtype(name)).to(self.device)
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
        self._mark(name)

    def _linear(self, module_name: str, shape: tuple, tensor: str, file: str, kind: str) -> Linear:
        """The plain `Linear` a quantised tensor (`kind`: FP8, gptq, awq) loads into, with its (out, in) checked."""
        module = self.model.get_submodule(module_name)
        if not isinstance(module, Linear):
            raise CheckpointError(f"{tensor!r} in {file} is {kind} but {module_name} is not a linear layer")
        if (module.out_features, module.in_features) != shape:
            raise CheckpointError(f"tensor {tensor!r} in {file} holds a {shape} weight (out, in), expected "
                                  f"{(module.out_features, module.in_features)}")
        return module

    def _set_fp8(self, weight_name: str, weight: torch.Tensor, scale: torch.Tensor, file: str) -> None:
        module_name = weight_name.rsplit(".", 1)[0]
        if weight_name not in self.params:
            raise CheckpointError(f"unexpected FP8 tensor {weight_name!r} in {file}")
        if weight_name.startswith(TOWER):  # torch nn.Linear with a bias: dequantised once, the tower is small
            want = tuple(self.params[weight_name].shape)
            if tuple(weight.shape) != want:
                raise CheckpointError(f"tensor {weight_name!r} in {file} has shape {tuple(weight.shape)}, "
                                      f"expected {want}")
            w = dequantize_fp8(weight.to(self.device), scale.to(self.device), self.cfg.quant.weight_block_size,
                               self.dtype)
            self.model.get_submodule(module_name)._parameters["weight"] = nn.Parameter(w, requires_grad=False)
            self._mark(weight_name)
            return
        module = self._linear(module_name, tuple(weight.shape), weight_name, file, "FP8")
        if self.quantizer is not None and self.quantizer.fmt is not None:  # dequantised, then requantised
            w = dequantize_fp8(weight.to(self.device), scale.to(self.device), self.cfg.quant.weight_block_size,
                               self.dtype)
            module._parameters["weight"] = nn.Parameter(w, requires_grad=False)
            self._mark(weight_name)
            return
        parent_name, child = module_name.rsplit(".", 1)
        try:
            fp8 = FP8Linear(weight.to(self.device), scale.to(self.device), self.cfg.quant.weight_block_size,
                            self.dtype)
        except ValueError as e:
            raise CheckpointError(f"{weight_name!r} in {file}: {e}") from None
        setattr(self.model.get_submodule(parent_name), child, fp8)
        self._mark(weight_name)

    def _set_expert(self, stacked: str, expert: int, proj: str, tensor: torch.Tensor, file: str) -> None:
        if not isinstance(self.model.get_submodule(stacked), Experts):
            raise CheckpointError(f"expert tensor {stacked}.{expert}.{proj}.weight in {file}: the other experts of "
                                  f"{stacked} are {self.int4_method or 'quantised'}; a layer cannot mix both")
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
        self._expert_part(stacked, expert, proj)

    def _expert_part(self, stacked: str, expert: int, proj: str) -> None:
        if (stacked, expert, proj) in self.expert_parts:
            return
        self.expert_parts.add((stacked, expert, proj))
        self.expert_count[stacked] += 1
        if self.expert_count[stacked] == self.held_experts * len(EXPERT_PROJS):
            module = self.model.get_submodule(stacked)
            if isinstance(module, QuantExperts):
                for part in ("gate_up", "down"):  # symmetric: every zero is 8, the kernels' default
                    zeros = getattr(module, part + "_zeros")
                    if zeros is not None and bool((zeros == 8).all()):
                        setattr(module, part + "_zeros", None)
            self._mark(stacked + ".gate_up_proj")
            self._mark(stacked + ".down_proj")

    # -- one tensor -------------------------------------------------------------------------------
    def _part(self, key: str, tensor: "_Stored", file: str) -> "_Stored | _Sliced | None":
        """Tensor parallel: this rank's part of `key` (None: another rank's expert, not read at all)."""
        n = parse(key)
        if n is None or n.component == "visual":
            return tensor
        if n.expert is not None and not self.shard.owns_expert(n.expert):
            self.skipped["routed experts of other ranks"] += 1
            return None
        try:
            if not n.scale:
                part = self.shard.slice(n.local, tuple(tensor.shape), n.expert)
                return tensor if part is None else _Sliced(tensor, part)
            block = self.cfg.quant.weight_block_size if self.cfg.quant is not None else (128, 128)
            part = self.shard.slice(n.local, tuple(s * b for s, b in zip(tensor.shape, block)), n.expert)
            if part is None:
                return tensor
            return _Sliced(tensor, _blocks(part, block[part.dim], tensor.shape[part.dim] * block[part.dim]))
        except ConfigError as e:
            raise CheckpointError(f"{key!r} in {file}: {e}") from None

    def take(self, key: str, tensor: "_Stored", file: str) -> None:
        if self.shard.size > 1:
            tensor = self._part(key, tensor, file)
            if tensor is None:
                return
        if self.int4_method is not None:
            split = gptq.split_name(key)
            if split is not None:
                self._take_int4(*split, tensor, file)
                return
        if tensor.dtype == torch.float8_e5m2:
            raise CheckpointError(f"tensor {key!r} in {file} is F8_E5M2; FP8 checkpoints are read in E4M3 only "
                                  "(block FP8 with weight_scale_inv, as the official ones)")
        target = map_name(key, self.mtp, self.vision)
        if target is None:
            raise CheckpointError(f"unexpected tensor {key!r} in {file}: not a Qwen3.5 checkpoint name")
        if target.kind == "skip":
            self.skipped[target.name] += 1
        elif target.kind == "param":
            if target.name not in self.params:
                raise CheckpointError(f"unexpected tensor {key!r} in {file}: the model has no {target.name!r}")
            if tensor.dtype == torch.float8_e4m3fn:
                self._pair_fp8(target.name, tensor.load(), None, file)
            else:
                self._set_param(target.name, tensor, file)
        elif target.kind == "scale":
            self._pair_fp8(target.name, None, tensor.load(torch.float32), file)
        else:  # expert / expert_scale
            target = Target(target.kind, target.name, target.expert - self.first_expert, target.proj)
            ident = f"{target.name}.{target.expert}.{target.proj}.weight"
            if target.name + ".gate_up_proj" not in self.params:
                raise CheckpointError(f"unexpected tensor {key!r} in {file}: {target.name} has no routed experts")
            if target.kind == "expert" and tensor.dtype != torch.float8_e4m3fn:
                self._set_expert(target.name, target.expert, target.proj, tensor.load(self.dtype), file)
            else:
                w = tensor.load() if target.kind == "expert" else None
                s = tensor.load(torch.float32) if target.kind == "expert_scale" else None
                self._pair_fp8(ident, w, s, file, expert=(target.name, target.expert, target.proj))

    # -- GPTQ / AWQ ---------------------------------------------------------------------------------------
    def _take_int4(self, stem: str, part: str, tensor: "_Stored", file: str) -> None:
        """Collect a module's qweight/qzeros/scales(/g_idx); convert once every part the checkpoint has is in."""
        target = map_name(stem + ".weight", self.mtp, self.vision)
        if target is None:
            raise CheckpointError(f"unexpected tensor {stem}.{part} in {file}: not a Qwen3.5 checkpoint name")
        if target.kind == "skip":
            self.skipped[target.name] += 1
            return
        parts = self.gptq_pending.setdefault(stem, {})
        parts[part] = tensor.load()
        if any(f"{stem}.{p}" in self.all_keys and p not in parts for p in gptq.PARTS):
            return
        del self.gptq_pending[stem]
        q = self.cfg.quant
        try:
            u, scale, zeros = gptq.to_int4(q.method, parts, q.group_size, stem,
                                           zero_offset=0 if q.checkpoint_format == "gptq_v2" else 1)
        except gptq.GPTQError as e:
            raise CheckpointError(f"{e} (in {file})") from None
        u, scale, zeros = u.to(self.device), scale.to(self.device), zeros.to(self.device)
        K, G = u.shape[1], u.shape[1] // scale.shape[1]
        if target.kind == "expert":
            self._set_int4_expert(target.name, target.expert, target.proj, u, scale, zeros, G, stem, file)
            return
        if target.kind != "param" or target.name not in self.params:
            raise CheckpointError(f"unexpected tensor {stem}.{part} in {file}: the model has no {target.name!r}")
        module_name = target.name.rsplit(".", 1)[0]
        module = self._linear(module_name, tuple(u.shape), f"{stem}.qweight", file, q.method)
        if quant.quantizable("int4", K, G):
            parent, _, child = module_name.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child,
                    QuantLinear("int4", *gptq.to_ours(u, scale, zeros)))
        else:  # our int4 layout cannot hold it: load it dequantised
            module._parameters["weight"] = nn.Parameter(gptq.dequantize(u, scale, zeros, self.dtype),
                                                        requires_grad=False)
            log.info("%s: K=%d, group %d does not fit our int4 layout; loaded dequantised", stem, K, G)
        self._mark(target.name)

    def _set_int4_expert(self, stacked: str, expert: int, proj: str, u: torch.Tensor, scale: torch.Tensor,
                         zeros: torch.Tensor, G: int, stem: str, file: str) -> None:
        module = self.model.get_submodule(stacked)
        if isinstance(module, Experts):
            if not module.gate_up_proj.is_meta:
                raise CheckpointError(f"{stem}.qweight in {file}: the other experts of {stacked} are not "
                                      f"{self.int4_method}; a layer cannot mix both")
            E, two_i, H = module.gate_up_proj.shape
            inter = two_i // 2
            stacks = []
            for N, K in ((two_i, H), (H, inter)):
                if quant.quantizable("int4", K, G):
                    stacks.append((torch.zeros(E, N, K // 2, dtype=torch.uint8, device=self.device),
                                   torch.zeros(E, N, K // G, dtype=torch.float16, device=self.device),
                                   torch.full((E, N, K // G), 8, dtype=torch.uint8, device=self.device)))
                else:
                    stacks.append((torch.zeros(E, N, K, dtype=self.dtype, device=self.device), None, None))
            module = QuantExperts("int4", *stacks)
            parent, _, child = stacked.rpartition(".")
            setattr(self.model.get_submodule(parent), child, module)
        inter = module.gate_up_q.shape[1] // 2
        if not 0 <= expert < module.gate_up_q.shape[0]:
            raise CheckpointError(f"expert {expert} of {stacked!r} in {file} is out of range "
                                  f"(num_experts={module.gate_up_q.shape[0]})")
        part, rows = {"gate_proj": ("gate_up", slice(0, inter)), "up_proj": ("gate_up", slice(inter, 2 * inter)),
                      "down_proj": ("down", slice(None))}[proj]
        q, s, z = module.stack(part)
        want = (q[expert, rows].shape[0], q.shape[-1] * (2 if s is not None else 1))
        if tuple(u.shape) != want:
            raise CheckpointError(f"{stem}.qweight in {file} holds a {tuple(u.shape)} weight (out, in), "
                                  f"expected {want}")
        if s is None:
            q[expert, rows] = gptq.dequantize(u, scale, zeros, self.dtype)
        else:
            if s.shape[-1] != scale.shape[-1]:
                raise CheckpointError(f"{stem}.scales in {file}: group size differs from the other experts'")
            q[expert, rows], s[expert, rows], z[expert, rows] = quant.pack_int4(u), scale, zeros
        self._expert_part(stacked, expert, proj)

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
        if self.cfg.quant is None or self.cfg.quant.method != "fp8":
            raise CheckpointError(f"{weight_name!r} in {file} is FP8 but config.json has no fp8 "
                                  "quantization_config")
        block = self.cfg.quant.weight_block_size
        if weight.dim() != 2:
            raise CheckpointError(f"FP8 tensor {weight_name!r} in {file} has shape {tuple(weight.shape)}; "
                                  "block FP8 needs a 2-D weight")
        want = (-(-weight.shape[0] // block[0]), -(-weight.shape[1] // block[1]))
        if tuple(scale.shape) != want:  # checked here for experts too, where dequantize_fp8 would not notice
            raise CheckpointError(f"tensor {weight_name + SCALE!r} in {file} has shape {tuple(scale.shape)}, "
                                  f"expected {want} for weight {tuple(weight.shape)} with blocks {tuple(block)}")
        if expert is not None:  # routed experts are dequantised into the stacked tensors
            w = dequantize_fp8(weight, scale, self.cfg.quant.weight_block_size, self.dtype)
            self._set_expert(*expert, w, file)
        else:
            self._set_fp8(weight_name, weight, scale, file)

    # -- the end ----------------------------------------------------------------------------------
    def finish(self) -> None:
        for stem, parts in self.gptq_pending.items():
            lacking = [f"{stem}.{p}" for p in gptq.PARTS
                       if p not in parts and (p != "g_idx" or f"{stem}.{p}" in self.all_keys)]
            raise CheckpointError(f"{self.int4_method} checkpoint lacks {', '.join(lacking)}")
        for name, (_, file) in self.pending_fp8.items():
            raise CheckpointError(f"FP8 tensor {name!r} in {file} has no matching {name + SCALE!r}")
        for name, (_, file) in self.pending_scales.items():
            raise CheckpointError(f"tensor {name + SCALE!r} in {file} has no matching FP8 weight {name!r}")
        cfg = self.cfg.text
        for stacked in {s for s, _, _ in self.expert_parts}:
            want = {(stacked, e, p) for e in range(self.held_experts) for p in EXPERT_PROJS}
            lacking = sorted(want - self.expert_parts)
            if lacking:
                s, e, p = lacking[0]
                raise CheckpointError(f"checkpoint lacks {len(lacking)} per-expert tensors, e.g. "
                                      f"{s}.{e + self.first_expert}.{p}.weight")
            self.loaded.update({stacked + ".gate_up_proj", stacked + ".down_proj"})
        if self.vision and not any(name.startswith(TOWER) for name in self.loaded):
            raise CheckpointError("checkpoint has no vision tower tensors (model.visual.*) although its config "
                                  "has a vision_config: load it as a language model only")
        missing = sorted(self.expected - self.loaded)
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s): {', '.join(missing[:5])}{more}")
        for what, n in sorted(self.skipped.items()):
            log.info("skipped %d %s tensor(s): not loaded", n, what)


def _blocks(part: Slice, block: int, full: int) -> Slice:
    """A weight's `Slice` as the slice of its block-FP8 scales (one per `block` rows or columns)."""
    for a, b in part.ranges:
        if a % block or (b % block and b != full):
            raise ConfigError(f"the tensor-parallel split (rows {a}:{b}) does not fall on the FP8 blocks of {block}")
    ranges = tuple((a // block, -(-b // block)) for a, b in part.ranges)
    return Slice(part.dim, ranges, sum(b - a for a, b in ranges))


def check_fp8_split(cfg: ModelConfig, shard: Shard) -> None:
    """ConfigError when the checkpoint is block FP8 and `shard`'s part of some quantised weight does not fall
    on its scale blocks (checked from the config alone, before any rank starts)."""
    if cfg.quant is None or cfg.quant.method != "fp8" or shard.size == 1:
        return
    block = cfg.quant.weight_block_size
    for key, shape in checkpoint_tensors(cfg):
        if not is_quantised(key):
            continue
        n = parse(key)
        if n.local in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):  # fused [E, rows, cols]: per expert
            part = shard.slice(n.local, shape)
            if part is None or part.dim == 0:
                continue
            part, shape = Slice(part.dim - 1, part.ranges, part.size), shape[1:]
        else:
            part = shard.slice(n.local, shape)
        if part is not None:
            try:
                _blocks(part, block[part.dim], shape[part.dim])
            except ConfigError as e:
                raise ConfigError(f"{key}: {e}; FP8 checkpoints split only where the blocks do") from None


def has_mtp(path: str | Path, cfg: ModelConfig | None = None) -> bool:
    """Whether the checkpoint at `path` ships an MTP head: its config declares MTP layers and its files hold
    `mtp.*` tensors (some conversions drop them)."""
    path = Path(path)
    cfg = cfg if cfg is not None else ModelConfig.from_file(path)
    if cfg.text.mtp_num_hidden_layers < 1:
        return False
    files = shard_files(path)
    if "model.safetensors" in files and not files["model.safetensors"]:  # single file: read its header
        with _Shard(path / "model.safetensors") as f:
            return any(k.startswith(MTP) for k in f.entries)
    return any(k.startswith(MTP) for names in files.values() for k in names)


def load_model(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
               progress: bool | None = None, prepack: bool = True, config: ModelConfig | None = None,
               fuse: bool | None = None, mtp: bool = False, quantization: str | None = None,
               vision: bool = False, shard: Shard | None = None) -> tuple[Qwen35ForCausalLM, ModelConfig]:
    """Load `path` (a checkpoint directory) as a ready-to-run model in eval mode.
    `fuse` (CPU; default: as `prepack`): merge projections that read the same input into one matmul each.
    `prepack` (CPU): move projections to oneDNN's packed layout, the fast path for decode.
    Both off leaves the modules exactly as the checkpoint names them (tests/loading/test_unfused_path.py
    checks that path gives the same logits).
    `config`: use this instead of `path/config.json` (e.g. with `--hf-overrides` applied).
    `mtp`: also load the MTP head (`model.mtp`) for speculative decoding; a checkpoint without one (see
    `has_mtp`) is a `CheckpointError` then.
    `quantization`: "int8" | "int4" quantises the projections, routed and shared experts and the lm_head at
    load (loading/quantize.py); "gptq" | "awq" only checks that the checkpoint is one (those load as int4
    whatever this says). A ValueError names the choices.
    `vision`: also load the vision tower (`model.visual`, for `encode_media`); a checkpoint without one (no
    vision_config, or no `model.visual.*` tensors) is a `CheckpointError` then. False (`--language-model-only`)
    skips its tensors: the tower takes no memory.
    `shard`: load this rank's share for tensor parallelism (parallel/sharding.py); each tensor's part is all
    that is read into memory, and routed experts of other ranks (expert parallel) are not read at all."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    cfg = config if config is not None else ModelConfig.from_file(path)
    fmt = resolve(quantization, cfg.quant.method if cfg.quant is not None else None)
    files = shard_files(path)
    if mtp and not has_mtp(path, cfg):
        raise CheckpointError(f"{path} has no MTP head (no mtp.* tensors, or mtp_num_hidden_layers = 0 in its "
                              "config): it cannot draft for speculative decoding")
    if vision and cfg.vision is None:
        raise CheckpointError(f"{path}: config.json has no vision_config: there is no vision tower to load "
                              "(a text-only checkpoint; load it without vision)")
    if shard is not None and shard.size > 1 and cfg.quant is not None and cfg.quant.method in ("gptq", "awq"):
        raise CheckpointError(f"{path} is a {cfg.quant.method} checkpoint: tensor parallelism does not split its "
                              "packed tensors yet (serve the BF16 or FP8 release, or quantise at load)")
    if shard is not None and shard.cfg is not cfg.text:
        shard = Shard(cfg.text, shard.group, shard.expert_parallel)
    with torch.device("meta"):
        model = Qwen35ForCausalLM(cfg.text, mtp=mtp, vision=cfg.vision if vision else None, shard=shard)
    fuse = prepack if fuse is None else fuse
    on_cpu = torch.device(device).type == "cpu"
    quantizer = None
    if fmt is not None or (cfg.quant is not None and cfg.quant.method in ("gptq", "awq")):
        quantizer = Quantizer(fmt, fuse=fuse and on_cpu, prepack=prepack and on_cpu)
    loader = _Loader(model, cfg, dtype, device, quantizer)
    for names in files.values():
        loader.all_keys.update(names)
    total = sum((path / f).stat().st_size for f in files)
    disable = None if progress is None else not progress  # None: show only on a terminal
    with tqdm(total=total, unit="B", unit_scale=True, desc="loading", disable=disable, leave=False) as bar:
        for file in sorted(files):
            with _Shard(path / file) as f:
                keys = f.keys()
                loader.all_keys.update(keys)
                absent = sorted(set(files[file]) - set(keys))
                if absent:
                    raise CheckpointError(f"{path / file} lacks {absent[0]!r} that the index places there")
                for key in keys:
                    tensor = f.tensor(key)
                    loader.take(key, tensor, str(path / file))
                    bar.update(tensor.nbytes)
    loader.finish()
    done_layers, head_done = loader.done_layers, loader.head_done
    del loader  # it holds every parameter: fusing and packing below must be able to free the originals
    if cfg.text.tie_word_embeddings and isinstance(model.lm_head, Linear):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.model.rotary.to(device)  # its inverse frequencies were computed on the CPU (rope.inv_frequencies)
    model.eval()
    if quantizer is not None:  # what was not finalised while loading (the MTP head; any out-of-order unit)
        for i, layer in enumerate(model.model.layers):
            if i not in done_layers:
                quantizer.finalize(layer, f"model.layers.{i}.")
        if model.mtp is not None:
            quantizer.finalize(model.mtp, MTP)
        if not head_done:
            quantizer.quantize_head(model)
        quantizer.report()
        release_free_memory()
        if quantizer.prepack:  # measured choices, as the layouts below
            choose_kernels(model)
    elif on_cpu:
        if fuse:
            model.fuse()
        if prepack:
            plain = [f"{o}x{i}" for (o, i), layout in model.prepack().items() if layout == "plain"]
            release_free_memory()  # the layout measurement's packed samples
            if plain:
                log.info("projections read by our CPU kernel (measured faster than oneDNN here, or oneDNN has "
                         "no bf16 path on this CPU): %s", ", ".join(plain))
    return model, cfg
