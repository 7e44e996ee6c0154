"""What one request may ask for, and the checks that run before any of it reaches the engine.

Every bound here is a 400 that names the limit. They keep one request from taking the CPU or memory that
other requests need: the size of each list in a body is capped, text with lone UTF-16 surrogates (valid
JSON, invalid Unicode) is refused, and a prompt longer than the context is refused after tokenising at
most a bounded prefix of it. All of it runs in the server's worker threads, never on the event loop.
"""

from __future__ import annotations

import json
from typing import Any

from ..engine.sampling_params import truncate_prompt
from ..tokenizer import control_tokens

MAX_MESSAGES = 10_000  # an agent loop of thousands of tool turns still fits
MAX_TOOLS = 512
MAX_STOP = 16
MAX_LOGIT_BIAS = 1024
MAX_BAD_WORDS = 1024
MAX_ALLOWED_TOKEN_IDS = 1 << 18  # any subset of a Qwen3.5 vocabulary (248,320 ids)
MAX_PROMPTS = 128  # completion prompts in one request
MAX_SEQUENCES = 256  # completion prompts x n
MAX_JSON_DEPTH = 256  # nesting of a request body


class RequestError(ValueError):
    """A bad request: becomes a 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_json(raw: bytes) -> Any:
    """The body as JSON; RequestError for invalid JSON, nesting deeper than MAX_JSON_DEPTH and lone surrogates."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise RequestError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not valid JSON: {e}") from None
    check_json(data)
    return data


def check_json(data: Any) -> None:
    """Walk a parsed body once (iteratively): depth at most MAX_JSON_DEPTH, every string valid Unicode."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, path)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise RequestError(f"{path or 'the body'} is nested more than {MAX_JSON_DEPTH} levels deep",
                                   path or None)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, path)
                stack.append((item, f"{path}.{key}" if path and isinstance(key, str) else
                              f"{path}[{key}]" if path else str(key), depth + 1))


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{path or 'the body'} contains a lone UTF-16 surrogate (invalid Unicode text)",
                           path or None) from None


def encode_bounded(tokenizer, text: str, limit: int, param: str = "prompt", marked: bool = False,
                   truncate: int | None = None, media: bool = False) -> list[int]:
    """Token ids of `text`, refusing (RequestError) one of `limit` tokens or more without encoding all of it.
    `marked`: `text` was rendered from marked messages (tokenizer/control_tokens.py): the control-token text the
    client sent is encoded as plain text. `truncate` (vLLM's truncate_prompt_tokens): keep the last k tokens
    instead of refusing (-1: as many as leave one token for the answer; `media`: the prompt has images or video,
    which no cut may take, see `truncated`).

    A prefix of the text has at least as many tokens as the full text has over that stretch, give or take
    the word cut at its end; so once a prefix has `limit + 8` tokens the whole text is too long. Prefixes
    grow 4x at a time, so refusing costs at most a few prefixes and accepting about 1.3 full encodes.
    """
    encode = tokenizer.encode_marked if marked and control_tokens.has_marks(text) else tokenizer.encode
    if truncate is not None:
        return truncated(encode(text), truncate, limit, media)
    chars = max(limit * 16, 4096)
    while chars < len(text):
        n = len(encode(text[:chars]))
        if n >= limit + 8:
            raise RequestError(too_long(f"more than {limit}", limit), param)
        chars *= 4
    ids = encode(text)
    if len(ids) >= limit:
        raise RequestError(too_long(str(len(ids)), limit), param)
    return ids


def truncated(ids: list[int], keep: int | None, limit: int, media: bool = False) -> list[int]:
    """The last `keep` of `ids` (vLLM's truncate_prompt_tokens; -1: `limit - 1`, which leaves one token for the
    answer; None: all of them). RequestError for what the engine's cut refuses (`truncate_prompt`: a `keep` past
    the context, any cut of a prompt with images or video, `media`) and for a cut prompt that still fills the
    context."""
    if keep is None:
        return ids
    try:
        ids = truncate_prompt(ids, keep, limit, media)
    except ValueError as e:
        raise RequestError(str(e), "truncate_prompt_tokens") from None
    if len(ids) >= limit:
        raise RequestError(too_long(str(len(ids)), limit), "truncate_prompt_tokens")
    return ids


def too_long(count: str, limit: int) -> str:
    return (f"the prompt is {count} tokens; this model's context is {limit} tokens (max_model_len), "
            "which leaves no room for an answer")
