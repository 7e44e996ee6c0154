"""Render a chat template the way transformers does (utils/chat_template_utils.py).

The environment matters for byte-identical prompts: trim/lstrip blocks, loop controls, `raise_exception`,
and a `tojson` that neither HTML-escapes nor sorts keys.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, Any]], *, tools: list[dict] | None = None,
                add_generation_prompt: bool = True, **kwargs: Any) -> str:
    """Render `messages` (OpenAI-style dicts) to the prompt text. Extra kwargs (e.g. enable_thinking)
    reach the template as variables."""
    return _compile(template).render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                     **kwargs)
