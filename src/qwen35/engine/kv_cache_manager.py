"""Who owns which cache block and state slot, and the prefix cache. Torch-free.

- `BlockPool`: paged K/V blocks with reference counts. A block is shared read-only by prefix-cache entries
  and the requests that hit them; sequences only ever append, so a shared block is never written again.
- `SlotPool`: fixed GDN state slots (conv + recurrent state) for running requests, or for saved prefixes.
- `PrefixCache`: saved prefixes of the hybrid model. An entry for the first `p` tokens of some sequence holds
  references on the K/V blocks covering positions `[0, p)` (the last one possibly partial) and one state slot
  with the GDN state right after token `p`. A new request reuses the longest saved prefix of its prompt:
  shares the full blocks, copies the rows of a partial block, copies the state, and computes only the rest.
  Entries are saved where chats and agent loops diverge (see `checkpoint_positions`) and at the end of each
  finished sequence; least-recently-used entries are evicted when blocks or slots run out.
  An entry's key is a keyed BLAKE2b of its tokens (and the request's `cache_salt`, vLLM's per-tenant
  isolation), with a key drawn per process: Python's `hash` of a tuple is deterministic and invertible step by
  step, so a client could craft a prompt whose key equals another prompt's and have its K/V served to it
  (the class of vLLM's CVE-2025-25183).
"""

from __future__ import annotations

import hashlib
import heapq
import os
from array import array
from collections import OrderedDict
from dataclasses import dataclass


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.refs = [0] * num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise MemoryError(f"need {n} KV blocks, {len(self._free)} free")
        out = [self._free.pop() for _ in range(n)]
        for b in out:
            self.refs[b] = 1
        return out

    def incref(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] += 1

    def release(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] == 0:
                self._free.append(b)
            elif self.refs[b] < 0:
                raise RuntimeError(f"KV block {b} released more often than taken")


class SlotPool:
    """Hands out the lowest free slot, so requests running together tend to hold a contiguous range,
    which the model updates in place instead of gathering and scattering states."""

    def __init__(self, slots: list[int]) -> None:
        self.capacity = len(slots)
        self._free = sorted(slots)
        heapq.heapify(self._free)
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise MemoryError("no free state slot")
        slot = heapq.heappop(self._free)
        self._used.add(slot)
        return slot

    def release(self, slot: int) -> None:
        if slot not in self._used:
            raise RuntimeError(f"state slot {slot} released but not in use")
        self._used.remove(slot)
        heapq.heappush(self._free, slot)


_KEY = os.urandom(32)  # per process: keys cannot be predicted, so no prompt can be made to collide with another


def prefix_key(tokens: list[int], p: int, salt: str | None = None) -> bytes:
    """The key of the first `p` tokens (media placeholders are negative digests, so signed 64-bit) and the salt."""
    h = hashlib.blake2b(key=_KEY, digest_size=16)
    if salt is not None:
        encoded = salt.encode()
        h.update(len(encoded).to_bytes(8, "little") + encoded)
    h.update(array("q", tokens[:p]).tobytes())
    return h.digest()


def checkpoint_positions(prompt: list[int], boundary_id: int | None, min_length: int, every: int,
                         gap: int = 0) -> list[int]:
    """Prompt positions after which the GDN state is worth saving for later requests: right after each of
    the last two `boundary_id` tokens (`<|im_start|>`: where the next chat turn, the same system prompt with
    another question, or the next agent step diverges from this prompt) and every `every` tokens (long
    shared documents). Each one splits the prefill (one extra forward pass), so prefixes shorter than
    `min_length`, cheap to recompute, are not saved. A periodic position closer than `gap` to a turn mark
    gives way to it (the turn mark is what the next turn hits). Positions are strictly inside the prompt."""
    n = len(prompt)
    marks: set[int] = set()
    turns: list[int] = []
    if boundary_id is not None:
        turns = [i + 1 for i, t in enumerate(prompt) if t == boundary_id][-2:]
        marks.update(turns)
    if every > 0:
        marks.update(p for p in range(every, n, every) if all(abs(p - t) >= gap for t in turns))
    return sorted(p for p in marks if min_length <= p < n)


@dataclass(eq=False)
class PrefixEntry:
    key: bytes
    length: int
    blocks: list[int]  # covering [0, length)
    slot: int


@dataclass(frozen=True)
class PrefixHit:
    length: int
    shared_blocks: list[int]  # full blocks the request now references
    partial_block: int | None  # entry block whose first `length % block_size` rows must be copied
    slot: int  # state slot to copy from


class PrefixCache:
    def __init__(self, blocks: BlockPool, slots: SlotPool, block_size: int) -> None:
        self.blocks, self.slots, self.block_size = blocks, slots, block_size
        self.entries: OrderedDict[bytes, PrefixEntry] = OrderedDict()  # LRU order: oldest first
        self.lengths: dict[int, int] = {}  # length -> number of entries with it
        self.held: dict[int, int] = {}  # block -> references entries hold on it (for exclusive_blocks)
        self.hits = self.misses = self.hit_tokens = 0

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, tokens: list[int], max_length: int, keys: dict[int, bytes] | None = None,
               salt: str | None = None) -> PrefixHit | None:
        """Longest saved prefix of `tokens` no longer than `max_length`; takes block references for the caller.
        `keys`: the caller's memo of `tokens`' prefix keys by length (tokens only grow at the end), so that a
        request looked up again step after step (a blocked queue head) hashes each of its prefixes once.
        Counts nothing: the caller `record`s the lookup that admits a request."""
        for length in sorted((n for n in self.lengths if n <= max_length), reverse=True):
            key = keys.get(length) if keys is not None else None
            if key is None:
                key = prefix_key(tokens, length, salt)
                if keys is not None:
                    keys[length] = key
            entry = self.entries.get(key)
            if entry is None:  # the key includes the length
                continue
            self.entries.move_to_end(entry.key)
            full = length // self.block_size
            shared = entry.blocks[:full]
            self.blocks.incref(shared)
            partial = entry.blocks[full] if length % self.block_size else None
            return PrefixHit(length, shared, partial, entry.slot)
        return None

    def record(self, hit: PrefixHit | None) -> None:
        """Count one admitted request's lookup (`hits`, `misses`, `hit_tokens`: per request, as /metrics says)."""
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
            self.hit_tokens += hit.length

    def can_insert(self) -> bool:
        return self.slots.capacity > 0

    def insert(self, tokens: list[int], length: int, blocks: list[int], salt: str | None = None) -> int | None:
        """Register the first `length` tokens (K/V in `blocks`). Returns the state slot the caller must fill
        with the GDN state after token `length`, or None when it is already cached or cannot be stored."""
        if self.slots.capacity == 0 or length <= 0:
            return None
        key = prefix_key(tokens, length, salt)
        if key in self.entries:
            self.entries.move_to_end(key)
            return None
        if self.slots.num_free == 0:
            self.evict_one()
        slot = self.slots.allocate()
        covering = blocks[: -(-length // self.block_size)]
        self.blocks.incref(covering)
        for b in covering:
            self.held[b] = self.held.get(b, 0) + 1
        self.entries[key] = PrefixEntry(key, length, covering, slot)
        self.lengths[length] = self.lengths.get(length, 0) + 1
        return slot

    def discard(self, tokens: list[int], length: int, salt: str | None = None) -> None:
        """Drop the entry for the first `length` tokens, if any (its state could not be saved)."""
        entry = self.entries.get(prefix_key(tokens, length, salt))
        if entry is not None:
            self.entries.move_to_end(entry.key, last=False)
            self.evict_one()

    def exclusive_blocks(self) -> int:
        """Blocks held by prefix entries only (no running request): what clearing the cache would free."""
        return sum(1 for b, n in self.held.items() if self.blocks.refs[b] == n)

    def evict_one(self) -> bool:
        if not self.entries:
            return False
        _, entry = self.entries.popitem(last=False)
        self.blocks.release(entry.blocks)
        for b in entry.blocks:
            self.held[b] -= 1
            if not self.held[b]:
                del self.held[b]
        self.slots.release(entry.slot)
        self.lengths[entry.length] -= 1
        if not self.lengths[entry.length]:
            del self.lengths[entry.length]
        return True

    def make_room(self, blocks_needed: int, all_or_nothing: bool = False) -> bool:
        """Evict LRU entries until `blocks_needed` blocks are free; False if impossible. `all_or_nothing`: evict
        nothing when even an empty cache would not free enough (a request waiting for blocks that running
        requests hold; without it such a queue head emptied the cache at every step, for nothing)."""
        if all_or_nothing and self.blocks.num_free + self.exclusive_blocks() < blocks_needed:
            return False
        while self.blocks.num_free < blocks_needed:
            if not self.evict_one():
                return False
        return True

    def clear(self) -> None:
        while self.evict_one():
            pass
