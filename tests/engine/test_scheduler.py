"""Scheduler and cache ownership without a model: budgets, chunking, admission, preemption, pools."""

from __future__ import annotations

import pytest

from qwen35.engine.kv_cache_manager import BlockPool, PrefixCache, SlotPool, checkpoint_positions
from qwen35.engine.request import Request, Status
from qwen35.engine.sampling_params import SamplingParams
from qwen35.engine.scheduler import Scheduler, SchedulerConfig

BS = 4


def make(max_seqs=4, budget=16, max_len=64, blocks=64, run_slots=4, prefix_slots=4, every=0, boundary=None):
    cfg = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=max_len,
                          block_size=BS, checkpoint_every=every, checkpoint_min=BS, boundary_token_id=boundary)
    return Scheduler(cfg, blocks, list(range(run_slots)), list(range(run_slots, run_slots + prefix_slots)))


def req(rid, n, max_tokens=4, start=0):
    return Request(rid, list(range(start, start + n)), SamplingParams(max_tokens=max_tokens))


def run_step(s: Scheduler, sample_token=7):
    out = s.schedule()
    s.on_step_done(out.seqs)
    for seq in out.seqs:
        if seq.sample:
            seq.request.output_ids.append(sample_token)
            if len(seq.request.output_ids) >= seq.request.params.max_tokens:
                s.finish(seq.request, "length")
    return out


def test_chunked_prefill_and_mixed_steps():
    s = make(budget=8)
    a, b = req("a", 10), req("b", 3)
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert [(x.request.request_id, x.num_tokens, x.sample) for x in out.seqs] == [("a", 8, False)]
    s.on_step_done(out.seqs)
    out = s.schedule()  # a finishes its prompt (2) and b is admitted in the same step
    assert [(x.request.request_id, x.num_tokens, x.context, x.sample) for x in out.seqs] == [
        ("a", 2, 8, True), ("b", 3, 0, True)]


def test_everything_returns_to_the_pools():
    s = make(budget=16)
    reqs = [req(f"r{i}", 5 + i, max_tokens=3) for i in range(6)]
    for r in reqs:
        s.add(r)
    while s.has_work():
        run_step(s)
    assert all(r.status == Status.FINISHED for r in reqs)
    s.prefix.clear()
    assert s.blocks.num_free == s.blocks.num_blocks and s.slots.num_free == s.slots.capacity
    assert all(ref == 0 for ref in s.blocks.refs)


def test_abort_waiting_and_running():
    s = make(max_seqs=1)
    a, b = req("a", 6), req("b", 6)
    s.add(a)
    s.add(b)
    run_step(s)
    s.finish(a, "abort")
    s.finish(b, "abort")
    assert not s.has_work() and s.blocks.num_free == s.blocks.num_blocks and s.slots.num_free == 4


def test_rejects_prompts_that_can_never_run():
    s = make(max_len=16, blocks=3)
    with pytest.raises(ValueError, match="max_model_len"):
        s.add(req("a", 16))
    with pytest.raises(ValueError, match="KV blocks"):
        s.add(req("b", 14))
    with pytest.raises(ValueError, match="empty"):
        s.add(req("c", 0))


def test_preemption_when_blocks_run_out():
    s = make(blocks=6, budget=32, max_len=64)  # 24 tokens of cache
    a, b = req("a", 8, max_tokens=12), req("b", 8, max_tokens=12, start=100)  # 20 tokens each, 40 > 24
    s.add(a)
    s.add(b)
    preempted = []
    for _ in range(40):
        if not s.has_work():
            break
        preempted += run_step(s).preempted
    assert preempted and not s.has_work()
    assert len(a.output_ids) == 12 and len(b.output_ids) == 12
    s.prefix.clear()
    assert s.blocks.num_free == 6


def test_prefix_checkpoints_cut_chunks_and_hit():
    s = make(budget=64, boundary=1000)
    prompt = list(range(28)) + [1000, 5]  # <|im_start|>-like boundary at index 28
    a = Request("a", prompt, SamplingParams(max_tokens=2))
    s.add(a)
    assert a.checkpoints == [29]
    out = s.schedule()
    assert [x.save_at for x in out.seqs] == [29] and out.seqs[0].num_tokens == 29
    s.on_step_done(out.seqs)
    slot = s.prefix.insert(a.all_ids, 29, a.blocks)
    assert slot is not None
    while s.has_work():
        run_step(s)
    b = Request("b", prompt[:29] + [99, 98], SamplingParams(max_tokens=1))
    s.add(b)
    out = s.schedule()
    assert out.hits and out.hits[0][1].length == 29 and out.seqs[0].context == 29
    assert out.seqs[0].num_tokens == 2 and out.seqs[0].save_at is None


def test_checkpoint_positions():
    prompt = [5, 1, 2, 5, 3, 4, 5, 6, 7, 8, 9]
    assert checkpoint_positions(prompt, 5, 2, 0) == [4, 7]
    assert checkpoint_positions(prompt, 5, 5, 0) == [7]
    assert checkpoint_positions(prompt, None, 2, 4) == [4, 8]


def test_prefix_cache_lru_eviction_releases_blocks():
    blocks = BlockPool(8)
    cache = PrefixCache(blocks, SlotPool([0, 1]), BS)
    owned = blocks.allocate(4)
    toks = list(range(16))
    assert cache.insert(toks, 8, owned) is not None
    assert cache.insert(toks, 12, owned) is not None
    assert cache.insert(toks, 15, owned) is not None  # evicts the length-8 entry
    assert len(cache) == 2 and cache.lookup(toks + [1], 8) is None
    blocks.release(owned)
    cache.clear()
    assert blocks.num_free == 8


def _media_req(rid, n, items):
    """A prompt of n tokens with images of `patches` patches placed at `offset`: [(offset, patches)]."""
    import numpy as np

    from qwen35.multimodal.inputs import MediaItem
    from qwen35.multimodal.layout import PromptMedia

    media = [MediaItem("image", np.zeros((p, 4), np.float32), (1, 2, p // 2)) for _, p in items]
    r = req(rid, n)
    r.media = PromptMedia.build(media, [[(o, m.num_tokens)] for (o, _), m in zip(items, media)])
    return r


def test_encoder_budget_cuts_chunks_before_media():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_model_len=128, block_size=BS, checkpoint_every=0,
                                  max_encoder_patches=40), 64, list(range(4)), list(range(4, 8)))
    a = _media_req("a", 40, [(2, 24), (20, 24)])  # two images of 24 patches (6 tokens each)
    b = _media_req("b", 30, [(3, 48)])  # one image larger than the whole budget
    s.add(a)
    s.add(b)
    out = run_step(s)  # a's second image would pass the budget: a's chunk stops before it, b's before its image
    assert [(x.request.request_id, x.num_tokens) for x in out.seqs] == [("a", 20), ("b", 3)]
    out = run_step(s)  # a's second image; b's image cannot join it in the step
    assert [(x.request.request_id, x.num_tokens) for x in out.seqs] == [("a", 20)]
    out = run_step(s)  # no other media in the step: an item larger than the budget runs
    assert [(x.request.request_id, x.context, x.num_tokens) for x in out.seqs] == [("a", 40, 1), ("b", 3, 27)]


def test_checkpoints_close_to_a_chunk_start_do_not_split_it():
    # periodic marks give way to a nearby turn mark
    assert checkpoint_positions([0] * 40 + [9] + [0] * 30, 9, 4, 32, gap=16) == [41, 64]  # 32 gives way
    assert checkpoint_positions([0] * 40 + [9] + [0] * 30, 9, 4, 32) == [32, 41, 64]
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_model_len=128, block_size=BS, checkpoint_every=0,
                                  checkpoint_min=4, boundary_token_id=9, checkpoint_min_gap=8), 64, [0], [1])
    r = Request("r", [1] * 10 + [9] + [1] * 3 + [9] + [1] * 10, SamplingParams(max_tokens=2))
    s.add(r)
    # marks at 11 and 15: 11 splits the first chunk; 15 is 4 tokens after the next start: no split
    assert [x.num_tokens for x in run_step(s).seqs] == [11]
    assert [x.num_tokens for x in run_step(s).seqs] == [14]


def test_a_blocked_queue_head_is_counted_once_and_hashed_once(monkeypatch):
    """Prefix hits and misses count admitted requests (as /metrics says), not every step the queue head waits
    for blocks; its prefix keys are computed once, not again at each of those steps; and the cache entries it
    cannot free room from (the running request holds the blocks) are kept, not evicted at each step."""
    import qwen35.engine.kv_cache_manager as kv

    s = make(budget=64, blocks=16, boundary=1000)  # 16 blocks of 4: the first request leaves too few
    prompt = list(range(20)) + [1000, 5]
    first = Request("a", prompt + list(range(100, 120)), SamplingParams(max_tokens=8))
    s.add(first)
    run_step(s)
    assert s.prefix.insert(first.all_ids, 21, first.blocks) is not None
    head = Request("b", prompt + [7] * 20, SamplingParams(max_tokens=4))
    s.add(head)
    hashed = []
    real_key = kv.prefix_key
    monkeypatch.setattr(kv, "prefix_key", lambda tokens, p, salt=None: hashed.append(p) or real_key(tokens, p, salt))
    for _ in range(3):
        out = run_step(s)  # the head waits: too few blocks
        assert not out.hits and [x.request.request_id for x in out.seqs] == ["a"] and head.status == Status.WAITING
    assert (s.prefix.hits, s.prefix.misses) == (0, 1) and hashed == [21]  # the first request's miss only
    s.finish(first, "length")
    out = s.schedule()
    assert out.hits and out.hits[0][1].length == 21 and hashed == [21]
    assert (s.prefix.hits, s.prefix.misses, s.prefix.hit_tokens) == (1, 1, 21)
