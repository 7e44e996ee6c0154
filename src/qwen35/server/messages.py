"""Clean incoming chat messages before the template sees them (docs/FORMAT.md §1), and collect the media they name.

The official template trips on shapes real clients send; each fix below is one of them:
- `developer` role -> `system`; system messages that are not first are merged into the first one;
- content given as a list of parts -> the text parts joined, when all parts are text;
- assistant messages without `content` (tool-call turns) -> empty content;
- `reasoning` (vLLM's name) in history -> `reasoning_content` (the template's name);
- tool-call `arguments` given as a JSON string (the OpenAI wire format) -> a dict for the template; a string
  that is not JSON (a call cut off by max_tokens, sent back as the server returned it) -> `{}`, as vLLM does,
  so that one cut-off call does not fail every later turn of the conversation;
- tool messages without `tool_call_id` (Qwen-Agent) are fine: the template matches results by order.

Images and videos: a content part that names one -- OpenAI's `{"type": "image_url", "image_url": {"url": U}}`,
vLLM's `{"type": "video_url", "video_url": {"url": U}}`, the Responses API's `{"type": "input_image",
"image_url": U}`, Qwen-Agent's and the template's `{"type": "image", "image": U}` / `{"type": "video", "video":
U}`, or any of these without "type" -- becomes `{"type": "image"}` / `{"type": "video"}` in place (the
template writes its vision placeholder there), and its (kind, URL) joins the request's media list in prompt
order. Nothing is fetched here (`multimodal/media.py` does that). Media in a system message is refused, as
the template refuses it; other part types (audio, embeddings) are refused by name.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

from .limits import RequestError

log = logging.getLogger("qwen35.server")

ROLES = ("system", "developer", "user", "assistant", "tool")


class MessageError(RequestError):
    """A message the server cannot turn into a prompt; the text names the message and field."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "messages")


class MediaRef(NamedTuple):
    """An image or video a message names: fetched later, in list order, to fill the template's placeholders."""

    kind: str  # "image" | "video"
    url: str  # a data:, http(s):// or file:// URL, as the client sent it


TEXT_PARTS = ("text", "input_text")
# part type -> (media kind, the key that holds its URL: a string, or an object with "url")
MEDIA_PARTS = {"image_url": ("image", "image_url"), "input_image": ("image", "image_url"),
               "image": ("image", "image"), "video_url": ("video", "video_url"), "video": ("video", "video")}
_KEYS = ("text", *MEDIA_PARTS)  # a part without "type" is the first of these keys it has (vLLM does the same)


def _media_url(part: dict[str, Any], kind: str, key: str, where: str) -> str:
    value = part.get(key)
    if isinstance(value, dict):
        value, where = value.get("url"), f"{where}.{key}.url"
    else:
        where = f"{where}.{key}"
    if kind == "video" and isinstance(value, list):
        raise MessageError(f"{where}: a video given as a list of frame images is not supported; send one video "
                           "file as a URL")
    if not isinstance(value, str) or not value.strip():
        raise MessageError(f"{where} must be a URL (data:, http(s):// or file://)")
    return value


def _content(content: Any, where: str, media: list[MediaRef] | str) -> str | list[dict[str, Any]]:
    """`content` as the template takes it: a string when every part is text, else the parts, with each image
    or video appended to `media` and left as a bare `{"type": kind}`. `media` a string: no media allowed here,
    and the string names what refuses it ("system messages")."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise MessageError(f"{where}.content must be a string, a list of parts or null")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        if not isinstance(part, dict):
            raise MessageError(f"{at} must be a string or an object")
        kind = part.get("type") or next((k for k in _KEYS if k in part), None)
        if kind in TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif isinstance(kind, str) and kind in MEDIA_PARTS:
            what, key = MEDIA_PARTS[kind]
            if isinstance(media, str):
                raise MessageError(f"{at} is {'an' if what == 'image' else 'a'} {what}: {media} cannot contain "
                                   "images or videos")
            media.append(MediaRef(what, _media_url(part, what, key, at)))
            parts.append({"type": what})
        else:
            raise MessageError(f"{at} has type {kind!r}: the supported content parts are text, image_url, "
                               "video_url, input_image, image and video")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _text(content: Any, where: str, what: str) -> str:
    """`content` that must be text: `what` ("system messages") says whose."""
    text = _content(content, where, what)
    assert isinstance(text, str)  # media parts were refused, so the parts were all text
    return text


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise MessageError(f"{where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise MessageError(f"{where}.tool_calls[{j}] needs function.name")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                log.warning("%s.tool_calls[%d].function.arguments is not valid JSON (%s); rendered as {}", where, j, e)
                args = {}
        if not isinstance(args, dict):
            raise MessageError(f"{where}.tool_calls[{j}].function.arguments must be a JSON object")
        out.append({**call, "type": call.get("type", "function"),
                    "function": {**fn, "arguments": args}})
    return out


def normalize_chat(messages: list[Any]) -> tuple[list[dict[str, Any]], list[MediaRef]]:
    """The messages as the template takes them, and the images and videos they name in prompt order (the
    order of the template's placeholders). MessageError (a 400) names the message and field of any problem."""
    system_parts: list[str] = []
    rest: list[dict[str, Any]] = []
    media: list[MediaRef] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise MessageError(f"{where} must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise MessageError(f"{where}.role must be one of {ROLES}, got {role!r}")
        if role in ("system", "developer"):
            system_parts.append(_text(msg.get("content"), where, "system messages"))
            continue
        clean: dict[str, Any] = {"role": role, "content": _content(msg.get("content"), where, media)}
        if role == "assistant":
            reasoning = msg.get("reasoning_content", msg.get("reasoning"))
            if reasoning:
                clean["reasoning_content"] = _text(reasoning, where + ".reasoning_content", "reasoning_content")
            if msg.get("tool_calls"):
                clean["tool_calls"] = _tool_calls(msg["tool_calls"], where)
        if role == "tool":
            if not rest:  # the template would open no turn for it (after a user message it opens one)
                raise MessageError(f"{where} is a tool result, but no assistant message (with the tool calls it "
                                   "answers) comes before it")
            for key in ("tool_call_id", "name"):
                if key in msg:
                    clean[key] = msg[key]
        rest.append(clean)
    if not rest:
        raise MessageError("messages must contain at least one user, assistant or tool message")
    if system_parts:
        rest.insert(0, {"role": "system", "content": "\n\n".join(system_parts)})
    return rest, media


def check_media_limits(media: list[MediaRef], limits: dict[str, int]) -> None:
    """MessageError when `media` holds more items of a kind than `limits` (--limit-mm-per-prompt) allows."""
    for kind in ("image", "video"):
        count = sum(1 for m in media if m.kind == kind)
        limit = limits.get(kind, 0)
        if count > limit == 0:
            raise MessageError(f"this server takes no {kind}s (it runs with --language-model-only or "
                               f"--limit-mm-per-prompt {kind}=0); the messages contain {count}")
        if count > limit:
            raise MessageError(f"the messages contain {count} {kind}s; this server takes at most {limit} per "
                               "request (--limit-mm-per-prompt)")
