"""Images and video through the HTTP server with the real openai client.

The server runs tiny's text model with a small vision tower, its engine in a process of its own (so media
cross the process boundary as they do with `--engine-process`). Checked: an image as a data URL, a video as
vLLM's `video_url`, the same answer twice (prefix and encoder cache), URL fetching refused for loopback by
default, a corrupt image and too many images as 400s while the server keeps serving, and a text-only server
that says why it refuses images.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
from PIL import Image

from tests.server.conftest import API_KEY, ENGINE, live_server


@pytest.fixture(scope="module")
def ckpt(vision_tiny_ckpt):
    return vision_tiny_ckpt


@pytest.fixture(scope="module")
def server(ckpt):
    from qwen35.engine.config import EngineConfig
    from qwen35.engine.process import EngineProcess

    with live_server(EngineProcess(EngineConfig(model=str(ckpt), **ENGINE, limit_mm_per_prompt={"image": 2}))
                     , mm_limits={"image": 2, "video": 1}) as srv:
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _png(w: int = 80, h: int = 48, seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _mp4(frames: int = 6, fps: int = 3) -> str:
    av = pytest.importorskip("av")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(1)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buf.getvalue()).decode()


def _ask(client, *parts, **kw):
    content = [*parts, {"type": "text", "text": "What do you see?"}]
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                          max_tokens=4, temperature=0, **kw)


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def test_image_as_data_url_and_again(client, server):
    first = _ask(client, _image(_png()))
    assert first.choices[0].finish_reason == "length"
    assert first.usage.prompt_tokens > 64  # 80x48 is resized up to 256x128 pixels: 32 image tokens + text
    again = _ask(client, _image(_png()))
    assert again.choices[0].message.content == first.choices[0].message.content
    other = _ask(client, _image(_png(seed=1)))  # same size, other pixels: no false prefix-cache hit
    assert other.usage.prompt_tokens == first.usage.prompt_tokens


def test_video_url_part(client):
    out = _ask(client, {"type": "video_url", "video_url": {"url": _mp4()}})
    assert out.choices[0].finish_reason == "length" and out.usage.prompt_tokens > 20


def test_stream_with_an_image(client):
    chunks = list(_ask(client, _image(_png(seed=2)), stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "length"


def test_loopback_url_refused_by_default(client):
    with pytest.raises(openai.BadRequestError, match="loopback"):
        _ask(client, _image("http://127.0.0.1:9/cat.png"))


def test_bad_media_are_400s_and_the_server_keeps_serving(client):
    with pytest.raises(openai.BadRequestError):
        _ask(client, _image("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n garbage").decode()))
    with pytest.raises(openai.BadRequestError, match="limit-mm-per-prompt"):
        _ask(client, _image(_png()), _image(_png()), _image(_png()))
    with pytest.raises(openai.BadRequestError, match="mm_processor_kwargs"):
        _ask(client, _image(_png()), extra_body={"mm_processor_kwargs": {"max_pixels": -1}})
    with pytest.raises(openai.BadRequestError, match="min_pixels"):  # refused before resizing to 1e12 pixels
        _ask(client, _image(_png()), extra_body={"mm_processor_kwargs": {"min_pixels": 10**12}})
    # past the 1,024-token context: refused from the resize grid, before its pixels are computed
    with pytest.raises(openai.BadRequestError, match="would take 3,9[0-9][0-9] prompt tokens"):
        _ask(client, _image(_png()), extra_body={"mm_processor_kwargs": {"min_pixels": 4_000_000}})
    ok = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message is not None


def test_slow_media_leave_workers_for_text(client, server, monkeypatch):
    """Requests with media prepare on at most half the CPU workers: while four of them take seconds each (a
    video decoding, a slow fetch), a text request is answered at once."""
    import threading
    import time

    import qwen35.server.chat as chat

    def slow(*args, **kwargs):
        time.sleep(2)
        raise ValueError("slow media")

    monkeypatch.setattr(chat, "load_media", slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(_refused(client))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # the four are preparing, or waiting for the media gate
    t0 = time.monotonic()
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    took = time.monotonic() - t0
    for t in threads:
        t.join()
    assert took < 1.2 and results == ["slow media"] * 4, (took, results)  # without the gate: 1.7 s


def _refused(client) -> str:
    try:
        _ask(client, _image(_png()))
    except openai.BadRequestError as e:
        return e.body["message"]
    return "answered"


def test_text_only_server_says_why(ckpt):
    from qwen35.engine.async_engine import AsyncLLM
    from qwen35.engine.config import EngineConfig

    engine = AsyncLLM(EngineConfig(model=str(ckpt), **{**ENGINE, "kv_cache_memory": 16 << 20},
                                   language_model_only=True))
    with live_server(engine) as srv:
        client = openai.OpenAI(base_url=srv["url"] + "/v1", api_key=API_KEY, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="language model only"):
            _ask(client, _image(_png()))
        assert _ask(client).choices[0].finish_reason == "length"


@pytest.mark.parametrize("body, media", [
    ({"messages": [{"role": "user", "content": "hi"}]}, False),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "an image_url"}]}]}, False),
    ({"messages": [{"role": "user", "content": [{"image": "data:..."}]}]}, True),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [  # a tool's output with an image
        {"type": "input_image", "image_url": "data:..."}]}]}, True),
    ({"input": "and now?", "previous_response_id": "resp_1"}, True),  # the stored conversation may hold some
])
def test_which_requests_pass_the_media_gate(body, media):
    from qwen35.server.app import _names_media

    assert _names_media(body) is media
