"""Training examples: a rendered conversation as token ids with the rows that carry a loss, and the batches.

Only what the model says is learnt: the assistant turns after the conversation's last user message, from the
end of the header the chat template puts in the prompt (`<|im_start|>assistant\\n<think>\\n`, or with thinking
off `...<think>\\n\\n</think>\\n\\n`) to their `<|im_end|>` inclusive. System prompts, tool lists, user turns,
tool responses and earlier turns (which the template renders without their reasoning) are context only.

Each example keeps three label rows for its token positions i: the next token (main loss), the token after
that (the MTP head's loss: it reads position i's hidden and token i+1) and the MTP head's input token i+1;
-100 marks a position without a loss. Batches are lists of examples of similar length, up to a token budget
including padding, in an order fixed by the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from ..tokenizer import Tokenizer

IGNORE = -100
_HEADER = "<|im_start|>assistant\n"
_END = "<|im_end|>"
_USER = "<|im_start|>user\n"
_TOOL_RESPONSE = "<tool_response>"


@dataclass(frozen=True, slots=True)
class Example:
    ids: np.ndarray  # [L] int64
    next_labels: np.ndarray  # [L] token i+1 where it is learnt, else IGNORE
    mtp_labels: np.ndarray  # [L] token i+2 where it is learnt, else IGNORE
    mtp_inputs: np.ndarray  # [L] token i+1 (0 past the end)

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, at: int) -> tuple["Example", "Example"]:
        """The rows before `at` and the rows from it on."""
        fields = (self.ids, self.next_labels, self.mtp_labels, self.mtp_inputs)
        return Example(*(x[:at] for x in fields)), Example(*(x[at:] for x in fields))


@dataclass(frozen=True, slots=True)
class Unit:
    """What a batch is made of: conversations that open with the same `head` (a tool header, without a loss),
    each one's rest in `tails`, trained over one copy of the head (model/shared_prefix.py); or, with head
    None, whole conversations."""

    head: Example | None
    tails: tuple[Example, ...]

    @classmethod
    def whole(cls, example: Example) -> "Unit":
        """One conversation, with nothing shared."""
        return cls(None, (example,))

    def __len__(self) -> int:
        return (len(self.head) if self.head is not None else 0) + sum(len(t) for t in self.tails)


def header_len(ids: np.ndarray, im_start: int) -> int:
    """Tokens of a conversation's first message (with tools offered: the system message that lists them),
    up to the `<|im_start|>` of the next one."""
    starts = np.flatnonzero(ids == im_start)
    if len(starts) < 2 or starts[0] != 0:
        raise ValueError("a conversation must open with a message and have another after it")
    return int(starts[1])


def share_heads(examples: list[Example], heads: list[int], most_tokens: int) -> list[Unit]:
    """Units of the examples: those whose first heads[i] ids (0: none) are the same share them, in groups of
    at most `most_tokens` tokens or twice the head, whichever is more (one conversation at least; a head of
    nearly `most_tokens`, the whole MCP filesystem set, still shares); the rest alone. In the order of first
    appearance.
    The shared rows must carry no loss and give the MTP head the same next token (the turn after a tool
    header always opens with `<|im_start|>`)."""
    groups: dict[tuple, list[Example]] = {}
    for i, (ex, n) in enumerate(zip(examples, heads)):  # the key holds the next id too: the MTP head reads it
        groups.setdefault((n, ex.ids[:n + 1].tobytes() if n else i), []).append(ex)
    units = []
    for (n, _), members in groups.items():
        if n == 0:
            units.append(Unit.whole(members[0]))
            continue
        head = members[0].split(n)[0]
        tails, size, most = [], n, max(most_tokens, 2 * n)
        for ex in members:
            own_head, tail = ex.split(n)
            if (own_head.next_labels != IGNORE).any() or (own_head.mtp_labels != IGNORE).any():
                raise ValueError("a shared head must carry no loss")
            if tails and size + len(tail) > most:
                units.append(Unit(head, tuple(tails)))
                tails, size = [], n
            tails.append(tail)
            size += len(tail)
        units.append(Unit(head, tuple(tails)))
    return units


def learnt_spans(text: str, thinking: bool) -> list[tuple[int, int]]:
    """Character spans [start, end) of what the assistant says after the conversation's last user message
    (a user turn that is not a tool response), one per assistant turn, each from after its template header
    to its `<|im_end|>` inclusive."""
    header = _HEADER + ("<think>\n" if thinking else "<think>\n\n</think>\n\n")
    last_user = _last_user_turn(text)
    spans = []
    at = text.find(_HEADER, last_user)
    while at != -1:
        start = at + len(header) if text.startswith(header, at) else at + len(_HEADER)
        end = text.find(_END, start)
        if end == -1:
            raise ValueError("an assistant turn without <|im_end|>")
        spans.append((start, end + len(_END)))
        at = text.find(_HEADER, end)
    return spans


def _last_user_turn(text: str) -> int:
    at = text.rfind(_USER)
    while at > 0 and text.startswith(_TOOL_RESPONSE, at + len(_USER)):
        at = text.rfind(_USER, 0, at)
    if at == -1:
        raise ValueError("a conversation without a user message")
    return at


def encode(text: str, spans: list[tuple[int, int]], tok: Tokenizer) -> Example:
    return encode_all([text], [spans], tok)[0]


def encode_all(texts: list[str], spans: list[list[tuple[int, int]]], tok: Tokenizer) -> list[Example]:
    """The examples of `texts`, whose characters in spans[i] are learnt; the tokenizer encodes them all in
    one call, on every core."""
    examples = []
    for enc, text_spans in zip(tok.backend.encode_batch(texts), spans):
        ids = np.asarray(enc.ids, dtype=np.int64)
        starts = np.asarray([s for s, _ in enc.offsets], dtype=np.int64)
        learnt = np.zeros(len(ids), dtype=bool)
        for s, e in text_spans:
            learnt |= (starts >= s) & (starts < e)
        examples.append(labelled(ids, learnt))
    return examples


def labelled(ids: np.ndarray, learnt: np.ndarray) -> Example:
    """The example of token ids `ids` [L] whose tokens where `learnt` [L] is True carry a loss."""
    shifted = np.full(len(ids), IGNORE, dtype=np.int64)
    shifted[:-1] = np.where(learnt[1:], ids[1:], IGNORE)
    mtp = np.full(len(ids), IGNORE, dtype=np.int64)
    mtp[:-2] = np.where(learnt[2:], ids[2:], IGNORE)
    inputs = np.zeros(len(ids), dtype=np.int64)
    inputs[:-1] = ids[1:]
    return Example(ids, shifted, mtp, inputs)


def plan_batches(lengths: list[int], batch_tokens: int, seed: int, pool: int = 64) -> list[list[int]]:
    """Indices of examples grouped into batches of at most `batch_tokens` tokens counting padding (one
    example per batch when it alone is longer): shuffled, sorted by length within pools of `pool` batches'
    worth of examples so that padding stays small, then the batches shuffled. Deterministic given the seed."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mean = max(1, sum(lengths) // max(1, len(lengths)))
    per_pool = max(1, pool * batch_tokens // mean)
    batches: list[list[int]] = []
    for p in range(0, len(order), per_pool):
        group = sorted(order[p:p + per_pool], key=lambda i: lengths[i])
        current: list[int] = []
        for i in group:
            longest = max([lengths[j] for j in current] + [lengths[i]])
            if current and longest * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches
