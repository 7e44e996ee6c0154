"""Helpers for the loading tests: copy a checkpoint, edit one shard or the config, make prompts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

INDEX = "model.safetensors.index.json"


def copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def weight_map(path: Path) -> dict[str, str]:
    return json.loads((path / INDEX).read_text())["weight_map"]


def shard_of(path: Path, key: str) -> Path:
    return path / weight_map(path)[key]


def read_tensor(path: Path, key: str) -> torch.Tensor:
    with safe_open(str(shard_of(path, key)), framework="pt") as f:
        return f.get_tensor(key)


def all_headers(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor of the checkpoint: name -> (safetensors dtype string, shape), without reading data."""
    out = {}
    for shard in sorted(set(weight_map(path).values())):
        raw = (path / shard).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__", None)
        out.update({k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()})
    return out


def edit_shard(path: Path, key: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Rewrite the shard holding `key` after `edit` mutates its tensors in place (add, drop, replace);
    the index follows (added names go to this shard, dropped names leave it)."""
    shard = shard_of(path, key)
    tensors = load_file(str(shard))
    before = set(tensors)
    edit(tensors)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    index = json.loads((path / INDEX).read_text())
    for name in before - set(tensors):
        del index["weight_map"][name]
    for name in set(tensors) - before:
        index["weight_map"][name] = shard.name
    (path / INDEX).write_text(json.dumps(index, indent=2))


def edit_config(path: Path, edit: Callable[[dict], None]) -> None:
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))


def random_prompts(vocab: int, lengths=(150, 97), seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
