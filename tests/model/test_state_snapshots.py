"""Speculative rollback through GDN state snapshots is exact.

One step verifies k+1 = 4 new tokens per sequence (the "draft") while writing snapshots; rolling back to
snapshot n and decoding on must give the logits of plain decoding that fed only the first n+1 draft tokens,
one by one. The step mixes sequences of different context lengths, one with fewer new tokens than k+1, and
one long prefill chunk with no snapshots (which sends the delta rule's head through the chunked form).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from qwen35.loading.checkpoint import load_model
from qwen35.model import ForwardBatch, SeqSpec
from tests.model.helpers import BLOCK, blocks_for

TOL = 2e-5
S = 4  # k + 1
MAX_LEN = 128


@pytest.fixture(scope="module", params=["tiny_ckpt", "tiny_moe_ckpt"])
def model(request):
    m, _ = load_model(request.getfixturevalue(request.param), dtype=torch.float32)
    return m


def with_snapshots(batch: ForwardBatch, slots: list[list[int]]) -> ForwardBatch:
    """Attach `snapshot_slots` [B, k+1]: through `dataclasses.replace` once the step metadata has the field,
    else through a subclass that adds it (the GDN layer reads it with getattr)."""
    snap = torch.tensor(slots, dtype=torch.int64, device=batch.input_ids.device)
    if "snapshot_slots" in {f.name for f in dataclasses.fields(batch)}:
        return dataclasses.replace(batch, snapshot_slots=snap)

    @dataclasses.dataclass(frozen=True, slots=True, eq=False)
    class WithSnapshots(type(batch)):
        snapshot_slots: torch.Tensor | None = None

    return WithSnapshots(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}, snapshot_slots=snap)


@torch.no_grad()
def run(model, cache, seqs: list[SeqSpec], snapshot_slots: list[list[int]] | None = None,
        every: bool = False) -> list[torch.Tensor]:
    """One forward; per sequence the logits of its last new token [V] (`every`: of every new token, [T_b, V])."""
    batch = ForwardBatch.build(seqs, BLOCK)
    if snapshot_slots is not None:
        batch = with_snapshots(batch, snapshot_slots)
    hidden = model(batch, cache)
    if not every:
        return list(model.logits(hidden[batch.last_index]))
    return list(model.logits(hidden).split([len(s.token_ids) for s in seqs]))


def gdn_state(model, cache, slot: int) -> list[torch.Tensor]:
    return [t[slot] for i in model.cfg.linear_layers for t in cache.state(i)]


@torch.no_grad()
def plain(model, prompt: list[int], fed: list[int], chunk: bool, steps: int):
    """Prefill `prompt`, feed `fed` one token at a time (or as one chunk), then decode greedily.
    Returns the GDN state after `fed` and the logits of every greedy step (the first from the last fed token)."""
    cache = model.new_cache(num_blocks=-(-MAX_LEN // BLOCK), block_size=BLOCK, num_slots=1)
    blocks = blocks_for(0, MAX_LEN)
    run(model, cache, [SeqSpec(prompt, 0, 0, blocks)])
    pieces = [fed] if chunk else [[t] for t in fed]
    ctx = len(prompt)
    for p in pieces:
        last = run(model, cache, [SeqSpec(p, ctx, 0, blocks)])[0]
        ctx += len(p)
    state = [t.clone() for t in gdn_state(model, cache, 0)]
    out = [last]
    for _ in range(steps - 1):
        out.append(run(model, cache, [SeqSpec([int(out[-1].argmax())], ctx, 0, blocks)])[0])
        ctx += 1
    return state, torch.stack(out)


def test_rollback_to_each_snapshot_equals_plain_decoding(model):
    gen = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(0, 1000, (n,), generator=gen).tolist()  # noqa: E731
    prompts = [rand(11), rand(5), rand(8), rand(3)]
    # new tokens this step: two 4-token drafts, a 2-token draft (fewer than k+1), a 20-token prefill chunk
    new = [rand(4), rand(4), rand(2), rand(20)]
    B = len(prompts)
    own = [0, 1, 2, 3]
    snaps = [[4, 5, 6, 7], [8, 9, 10, 11], [-1, -1, 12, 13], [-1, -1, -1, -1]]
    cache = model.new_cache(num_blocks=B * -(-MAX_LEN // BLOCK), block_size=BLOCK, num_slots=14)
    blocks = [blocks_for(i, MAX_LEN) for i in range(B)]
    run(model, cache, [SeqSpec(p, 0, own[i], blocks[i]) for i, p in enumerate(prompts)])
    verify = run(model, cache, [SeqSpec(new[i], len(p), own[i], blocks[i]) for i, p in enumerate(prompts)], snaps,
                 every=True)
    plain_runs = {}  # (sequence, tokens fed) -> plain decoding's state and logits

    steps = 3
    for n in range(S):
        accepted = [min(n, len(new[b]) - 1) if b < 3 else len(new[b]) - 1 for b in range(B)]
        c = copy.deepcopy(cache)
        rows = [b for b in range(3) if accepted[b] < len(new[b]) - 1]  # n = k: the own slot is current
        if rows:
            c.restore_snapshots([snaps[b][S - len(new[b]) + accepted[b]] for b in rows], [own[b] for b in rows])
        ctx = [len(p) + a + 1 for p, a in zip(prompts, accepted)]
        got = [[verify[b][accepted[b]]] for b in range(B)]
        states = [[t.clone() for t in gdn_state(model, c, own[b])] for b in range(B)]
        for _ in range(steps - 1):
            logits = run(model, c, [SeqSpec([int(got[b][-1].argmax())], ctx[b], own[b], blocks[b]) for b in range(B)])
            for b in range(B):
                got[b].append(logits[b])
                ctx[b] += 1
        for b in range(B):
            key = (b, accepted[b])
            if key not in plain_runs:
                plain_runs[key] = plain(model, prompts[b], new[b][:accepted[b] + 1], chunk=b == 3, steps=steps)
            want_state, want = plain_runs[key]
            for s_got, s_want in zip(states[b], want_state):
                assert (s_got - s_want).abs().max() <= 1e-5 * max(1.0, s_want.abs().max().item()), (n, b)
            assert (torch.stack(got[b]) - want).abs().max() < TOL, (n, b)
            assert torch.equal(torch.stack(got[b]).argmax(-1), want.argmax(-1)), (n, b)


def test_snapshots_leave_the_step_unchanged(model):
    """The same step with and without snapshots: same logits, same state in the sequences' own slots. Own slots
    [1, 0] are not contiguous (the layer works on gathered copies), and a -1 last column writes nothing."""
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (9, 30)]
    new = [torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (4, 4)]
    blocks = [blocks_for(i, MAX_LEN) for i in range(2)]
    own = [1, 0]
    outs = []
    for snaps in (None, [[2, 3, 4, 5], [6, 7, 8, -1]]):
        cache = model.new_cache(num_blocks=2 * -(-MAX_LEN // BLOCK), block_size=BLOCK, num_slots=10)
        run(model, cache, [SeqSpec(p, 0, own[i], blocks[i]) for i, p in enumerate(prompts)])
        logits = run(model, cache, [SeqSpec(new[i], len(p), own[i], blocks[i]) for i, p in enumerate(prompts)],
                     snaps, every=True)
        outs.append((torch.cat(logits), [gdn_state(model, cache, own[i]) for i in range(2)]))
        if snaps is not None:
            for a, b in zip(gdn_state(model, cache, 5), gdn_state(model, cache, own[0])):
                assert torch.equal(a, b)  # the last snapshot is the sequence's own state
            assert all((t == 0).all() for t in gdn_state(model, cache, 9))  # untouched
    (l0, s0), (l1, s1) = outs
    assert (l0 - l1).abs().max() < TOL
    for a_seq, b_seq in zip(s0, s1):
        for a, b in zip(a_seq, b_seq):
            assert (a - b).abs().max() < 1e-5
