"""AsyncLLM: concurrent streams, abort on early exit, bad requests answered without stopping the loop."""

from __future__ import annotations

import asyncio

import pytest

from qwen35.engine import AsyncLLM, EngineConfig, SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    eng = AsyncLLM(EngineConfig(model=str(tiny_ckpt), dtype="float32", max_model_len=256, max_num_seqs=4,
                                kv_cache_memory=64 << 20))
    yield eng
    eng.shutdown()


def test_concurrent_streams_and_abort(engine):
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)

    async def collect(prompt):
        pieces = [out async for out in engine.generate(prompt, params)]
        return pieces

    async def leave_early(prompt):
        async for out in engine.generate(prompt, SamplingParams(max_tokens=200, ignore_eos=True)):
            if len(out.outputs[0].token_ids) >= 2:
                break  # like a client that disconnects

    async def main():
        return await asyncio.gather(collect([1, 2, 3]), collect([4, 5, 6, 7]), leave_early([8, 9]))

    a, b, _ = asyncio.run(main())
    assert a[-1].finished and len(a[-1].outputs[0].token_ids) == 10
    assert "".join(o.outputs[0].delta_text for o in a) == a[-1].outputs[0].text
    usage = engine.call(lambda e: (e.has_unfinished(), e.cache_usage()))
    for _ in range(50):
        if not usage[0]:
            break
        usage = engine.call(lambda e: (e.has_unfinished(), e.cache_usage()))
    assert not usage[0] and usage[1]["slots_free"] == usage[1]["slots_total"]


def test_bad_request_raises_and_engine_keeps_serving(engine):
    async def main():
        with pytest.raises(ValueError, match="max_model_len"):
            async for _ in engine.generate(list(range(300))):
                pass
        return [o async for o in engine.generate([1, 2], SamplingParams(max_tokens=3, ignore_eos=True))]

    outs = asyncio.run(main())
    assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 3
