"""`EncoderCache`: vision-tower outputs kept by content digest, so the same image is encoded once.

A chat sends the whole conversation again each turn: the image of turn one comes back in turn two, and
a prompt chunk that cuts through an image needs the rest of its rows in the next step. Entries are the
tower's output for one item ([tokens, hidden] in the model dtype), evicted least recently used once their
bytes pass the budget. An item larger than the whole budget is still returned to its caller, just not kept.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


class EncoderCache:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"encoder cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: str) -> torch.Tensor | None:
        out = self._entries.get(digest)
        if out is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(digest)
        return out

    def put(self, digest: str, embeddings: torch.Tensor) -> None:
        size = embeddings.numel() * embeddings.element_size()
        if size > self.max_bytes or digest in self._entries:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        self._entries[digest] = embeddings
        self.bytes += size

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
