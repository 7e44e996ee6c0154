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


RESERVED_VARS = ("messages", "tools", "add_generation_prompt")  # set by the caller, never by template kwargs


def continue_final_message(text: str, messages: list[dict[str, Any]]) -> str:
    """A rendered prompt (without generation prompt) whose last message is the assistant's, left open so that
    generation continues it: the text up to its closing `<|im_end|>` (vLLM's `continue_final_message`)."""
    if messages and messages[-1].get("role") == "assistant" and text.rstrip().endswith("<|im_end|>"):
        return text[: text.rfind("<|im_end|>")]
    return text


# ---- untrusted templates ---------------------------------------------------------------------------------
# A template sent with a request is code from the network: a 120-byte template can loop for hours or build
# gigabytes (`("x" * 2000000000)|length`). The sandbox stops attribute tricks, not that; so such a template is
# rendered in a child process with a wall-clock timeout, a CPU-time limit, an address-space limit and a cap
# on the output it may send back.

class TemplateLimitError(RuntimeError):
    """The template ran past a limit (time, memory or output size) and was stopped."""


def render_chat_isolated(template: str, messages: list[dict[str, Any]], *, tools: list[dict] | None = None,
                         add_generation_prompt: bool = True, timeout: float = 2.0, memory_bytes: int = 1 << 30,
                         max_output_bytes: int = 16 << 20, **kwargs: Any) -> str:
    """`render_chat` in a child process under limits. Raises TemplateLimitError past a limit, and
    jinja2.TemplateError (with the child's message) when the template itself fails."""
    import subprocess
    import sys

    payload = json.dumps({"template": template, "messages": messages, "tools": tools,
                          "add_generation_prompt": add_generation_prompt, "kwargs": kwargs,
                          "max_output": max_output_bytes}, ensure_ascii=False)

    # the child sets its own limits first thing: a preexec_fn runs Python between fork and exec, which can
    # deadlock in a threaded server (it hung a worker thread's Popen for good, before any timeout applied)
    limits = [str(memory_bytes), str(int(timeout) + 1)]
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _CHILD, *limits], input=payload.encode(),
                              capture_output=True, timeout=timeout + 1.0)  # +1 s for the interpreter's start
    except subprocess.TimeoutExpired:
        raise TemplateLimitError(f"rendering the chat template took longer than {timeout:g} s") from None
    out = done.stdout
    if done.returncode == 0 and out[:1] == b"o":
        return out[1:].decode("utf-8")
    if done.returncode == 0 and out[:1] == b"e":
        raise jinja2.exceptions.TemplateError(out[1:].decode("utf-8", "replace"))
    if done.returncode == 0 and out[:1] == b"l":
        raise TemplateLimitError(f"the rendered chat template is larger than {max_output_bytes} bytes")
    raise TemplateLimitError("rendering the chat template ran out of its time or memory limit "
                             f"({timeout:g} s, {memory_bytes >> 20} MiB)")


# The child: no site-packages tricks (-I), jinja2 imported from this file's environment through sys.path.
_CHILD = f"""
import resource, sys
memory, cpu = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
import json
sys.path[:0] = {json.dumps([p for p in __import__('sys').path if p])}
try:
    from qwen35.tokenizer.chat_template import render_chat
    req = json.loads(sys.stdin.buffer.read())
    text = render_chat(req["template"], req["messages"], tools=req["tools"],
                       add_generation_prompt=req["add_generation_prompt"], **req["kwargs"])
    data = text.encode("utf-8")
    if len(data) > req["max_output"]:
        sys.stdout.buffer.write(b"l")
    else:
        sys.stdout.buffer.write(b"o" + data)
except MemoryError:
    sys.exit(3)
except Exception as e:
    sys.stdout.buffer.write(b"e" + f"{{type(e).__name__}}: {{e}}".encode("utf-8", "replace"))
"""
