"""Chat messages with images and videos: every client shape is collected in prompt order, the template gets
its placeholders, and shapes the server cannot use are a 400 naming the part."""

from __future__ import annotations

import pytest

from qwen35.server.messages import MediaRef, MessageError, check_media_limits, normalize_chat
from qwen35.tokenizer.chat_template import render_chat
from qwen35.tokenizer.tokenizer import DEFAULT_CHAT_TEMPLATE

PNG = "data:image/png;base64,iVBORw0KGgo="
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


def user(*parts):
    return {"role": "user", "content": list(parts)}


@pytest.mark.parametrize("part,ref", [
    ({"type": "image_url", "image_url": {"url": PNG, "detail": "high"}}, MediaRef("image", PNG)),  # OpenAI
    ({"type": "image_url", "image_url": "http://a/b.png"}, MediaRef("image", "http://a/b.png")),
    ({"type": "input_image", "image_url": "http://a/b.png"}, MediaRef("image", "http://a/b.png")),  # Responses
    ({"type": "image", "image": "file:///m/a.jpg"}, MediaRef("image", "file:///m/a.jpg")),  # Qwen-Agent
    ({"image": "http://a/b.png"}, MediaRef("image", "http://a/b.png")),  # no "type": inferred from the key
    ({"image_url": {"url": PNG}}, MediaRef("image", PNG)),
    ({"type": "video_url", "video_url": {"url": "http://a/v.mp4"}}, MediaRef("video", "http://a/v.mp4")),  # vLLM
    ({"type": "video", "video": "file:///m/v.mp4"}, MediaRef("video", "file:///m/v.mp4")),
    ({"video_url": {"url": "http://a/v.mp4"}}, MediaRef("video", "http://a/v.mp4")),
])
def test_every_client_shape_of_a_media_part(part, ref):
    clean, media = normalize_chat([user({"type": "text", "text": "What is this?"}, part)])
    assert media == [ref]
    assert clean == [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": ref.kind}]}]


def test_media_in_prompt_order_and_the_template_places_them():
    messages = [
        {"role": "developer", "content": "Be brief."},
        user({"type": "image_url", "image_url": {"url": "http://a/1.png"}}, "Compare with",
             {"type": "video_url", "video_url": {"url": "http://a/2.mp4"}}),
        {"role": "assistant", "content": "They differ."},
        {"role": "tool", "content": [{"type": "text", "text": "screenshot:"}, {"image": "http://a/3.png"}]},
        user("And this?", {"type": "image", "image": "http://a/4.png"}),
    ]
    clean, media = normalize_chat(messages)
    assert [m.url[-5:] for m in media] == ["1.png", "2.mp4", "3.png", "4.png"]
    prompt = render_chat(DEFAULT_CHAT_TEMPLATE, clean, add_generation_prompt=True)
    assert prompt.count(IMAGE) == 3 and prompt.count(VIDEO) == 1
    assert (prompt.index(IMAGE) < prompt.index("Compare with") < prompt.index(VIDEO)
            < prompt.index("screenshot:") < prompt.rindex("And this?") < prompt.rindex(IMAGE))
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" + IMAGE)


def test_text_only_messages_are_unchanged():
    messages = [{"role": "system", "content": [{"type": "text", "text": "S"}]},
                user({"type": "text", "text": "a"}, "b", {"type": "input_text", "text": "c"}, {"text": "d"})]
    clean, media = normalize_chat(messages)
    assert media == [] and clean == [{"role": "system", "content": "S"}, {"role": "user", "content": "abcd"}]


def test_a_cut_off_call_sent_back_renders_with_no_arguments():
    """A call cut off by max_tokens comes back as the server returned it (arguments not valid JSON): it renders
    with no parameters, as vLLM does, instead of failing every later turn."""
    cut = {"role": "assistant", "content": "",
           "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"city": "Par'}}]}
    clean, _ = normalize_chat([user("Weather?"), cut, {"role": "tool", "content": "sunny"}])
    assert clean[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {}}
    prompt = render_chat(DEFAULT_CHAT_TEMPLATE, clean, add_generation_prompt=True)
    assert "<function=f>\n</function>" in prompt and "<tool_response>\nsunny" in prompt


@pytest.mark.parametrize("messages,message", [
    ([{"role": "tool", "content": "x"}, user("hi")], r"messages\[0\] is a tool result, but no assistant message"),
    ([{"role": "system", "content": "S"}, {"role": "tool", "content": "x"}, user("hi")],
     r"messages\[1\] is a tool result, but no assistant"),
    ([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}, user("hi")],
     r"messages\[0\].content\[0\] is an image: system messages cannot contain images or videos"),
    ([user("hi"), {"role": "developer", "content": [{"video": "http://a/v.mp4"}]}],
     r"messages\[1\].content\[0\] is a video: system messages cannot"),
    ([user("q"), {"role": "assistant", "content": "a", "reasoning_content": [{"image": "http://a/b.png"}]}],
     r"reasoning_content cannot contain images"),
    ([user({"type": "image_url", "image_url": {}})], r"messages\[0\].content\[0\].image_url.url must be a URL"),
    ([user({"type": "image_url"})], r"messages\[0\].content\[0\].image_url must be a URL"),
    ([user({"type": "image", "image": " "})], r"content\[0\].image must be a URL"),
    ([user({"type": "video", "video": ["f1.jpg", "f2.jpg"]})], "a video given as a list of frame images"),
    ([user({"type": "input_audio", "input_audio": {"data": "..."}})], "has type 'input_audio': the supported"),
    ([user({"type": "image_embeds", "image_embeds": "..."})], "has type 'image_embeds'"),
    ([user({"type": ["image_url"], "image_url": {"url": PNG}})], r"has type \['image_url'\]"),
    ([user({"detail": "high"})], "has type None"),
    ([user(5)], r"content\[0\] must be a string or an object"),
])
def test_unusable_parts_are_refused_by_name(messages, message):
    with pytest.raises(MessageError, match=message) as e:
        normalize_chat(messages)
    assert e.value.param == "messages"


def test_media_limits():
    media = [MediaRef("image", "a"), MediaRef("image", "b"), MediaRef("video", "c")]
    check_media_limits(media, {"image": 2, "video": 1})
    check_media_limits([], {"image": 0, "video": 0})
    with pytest.raises(MessageError, match=r"the messages contain 2 images; this server takes at most 1 per "
                                           r"request \(--limit-mm-per-prompt\)"):
        check_media_limits(media, {"image": 1, "video": 1})
    with pytest.raises(MessageError, match=r"this server takes no videos \(it runs with --language-model-only or "
                                           r"--limit-mm-per-prompt video=0\); the messages contain 1"):
        check_media_limits(media, {"image": 4, "video": 0})


def test_image_request_reaches_the_model(server):
    import httpx

    def ask(*parts):
        body = {"model": "tiny", "max_tokens": 2, "messages": [user("What is this?", *parts)]}
        r = httpx.post(server["url"] + "/v1/chat/completions", json=body, timeout=60,
                       headers={"Authorization": "Bearer test-key"})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["prompt_tokens"]

    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(buf, format="PNG")
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    # the 1x1 image is resized up to the 256 x 256 minimum: 64 placeholder tokens and the two markers
    assert ask({"type": "image_url", "image_url": {"url": png}}) == ask() + 64 + 2
