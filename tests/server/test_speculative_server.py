"""MTP speculative decoding behind the server: the engine in its own process, the openai client, /metrics."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY, ENGINE, live_server, wait_idle


@pytest.mark.slow  # 8 s; tests/train/test_demo_model.py checks MTP through a server (with real acceptance) fast
def test_speculating_server_answers_and_reports_acceptance(tiny_ckpt):
    from qwen35.engine.config import EngineConfig
    from qwen35.engine.process import EngineProcess

    cfg = EngineConfig(model=str(tiny_ckpt), **ENGINE,
                       speculative_config={"method": "qwen3_next_mtp", "num_speculative_tokens": 2})
    with live_server(EngineProcess(cfg)) as srv:
        assert "MTP head, 2 draft token(s)" in srv["state"].client.info.speculative
        client = openai.OpenAI(base_url=srv["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        out = client.completions.create(model="tiny", prompt="Hello there", max_tokens=12, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == 12
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="tiny", prompt="Hello there", max_tokens=12, temperature=0, stream=True,
            extra_body={"ignore_eos": True}))
        assert streamed == out.choices[0].text
        metrics = httpx.get(srv["url"] + "/metrics").text
        drafts = [line for line in metrics.splitlines() if line.startswith("vllm:spec_decode_num_draft_tokens")]
        assert drafts and float(drafts[0].split()[-1]) > 0
        assert 'vllm:spec_decode_num_accepted_tokens_per_pos_total{position="1"}' in metrics
        idle = wait_idle(srv["state"])
        assert idle["blocks_free"] == idle["blocks_total"] and idle["slots_free"] == idle["slots_total"]
