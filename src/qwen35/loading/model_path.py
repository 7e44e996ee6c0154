"""Resolve a model argument (`qwen35 serve`, `qwen35 generate`, `LLM(...)`) to a checkpoint directory, without
downloading anything.

    qwen35 serve /models/Qwen3.5-0.8B     # a directory: used as is
    qwen35 serve Qwen/Qwen3.5-0.8B        # a Hugging Face id: its snapshot in the local HF cache

The HF cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub` (the layout
`huggingface_hub` writes: `models--Qwen--Qwen3.5-0.8B/snapshots/<commit>/`, with `refs/<revision>` holding the
commit a revision name points at). The revision is `--revision` when given (a ref name or a commit), else
`refs/main`, else the most recently written snapshot. qwen35 never fetches weights: an id that is not in the
cache is an error that says how to download it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# `org/name`, as the Hub spells repository ids (letters, digits, `-`, `_`, `.`; no `..` or leading `.`)
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelNotFound(ValueError):
    """The model argument names nothing we can load; the message says why and what to do."""


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # the checkpoint directory
    name: str  # the argument as given: the default served model name (vLLM)
    source: str  # "directory" | "hf-cache"


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repositories."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def looks_like_hf_id(text: str) -> bool:
    return bool(_HF_ID.match(text)) and ".." not in text


def find_in_hf_cache(repo_id: str, revision: str | None = None, cache: Path | None = None) -> Path | None:
    """The snapshot directory of `repo_id` at `revision` in the local cache, or None."""
    repo = (cache or hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    wanted = revision or "main"
    ref = repo / "refs" / wanted
    if ref.is_file():
        commit = ref.read_text().strip()
        return snapshots / commit if (snapshots / commit).is_dir() else None
    if revision is not None:  # a commit hash given directly
        return snapshots / revision if (snapshots / revision).is_dir() else None
    candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def resolve_model(arg: str, revision: str | None = None) -> ResolvedModel:
    """A checkpoint directory for `arg` (a path or an HF id), or ModelNotFound saying what went wrong."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return ResolvedModel(path, arg, "directory")
    if path.exists():
        raise ModelNotFound(f"model {arg!r} is a file, not a checkpoint directory")
    if looks_like_hf_id(arg):
        found = find_in_hf_cache(arg, revision)
        if found is not None:
            return ResolvedModel(found, arg, "hf-cache")
        at = f" at revision {revision!r}" if revision else ""
        raise ModelNotFound(
            f"model {arg!r} is neither a local directory nor in the Hugging Face cache{at} ({hf_cache_dir()}); "
            f"qwen35 does not download weights: run `huggingface-cli download {arg} --local-dir DIR`, "
            f"then `qwen35 serve DIR`")
    raise ModelNotFound(f"model directory {arg!r} does not exist")


def tokenizer_dir(arg: str) -> Path:
    """The directory of a tokenizer given apart from the model (vLLM's `--tokenizer`): a path or an HF id (its
    newest cached snapshot), which must hold tokenizer.json (without it the built-in vocabulary would be used
    silently, not what was asked)."""
    try:
        path = resolve_model(arg).path  # the model's --revision is not the tokenizer's
    except ModelNotFound:
        raise ModelNotFound(f"tokenizer {arg!r} is neither a directory nor in the Hugging Face cache "
                            f"({hf_cache_dir()})") from None
    if not (path / "tokenizer.json").is_file():
        raise ModelNotFound(f"tokenizer {arg!r}: {path} has no tokenizer.json")
    return path
