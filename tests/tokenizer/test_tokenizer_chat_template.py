"""The packaged Qwen3.5 chat template renders the exact strings the official template renders in transformers (docs/FORMAT.md §1)."""

from __future__ import annotations

import hashlib
import json

import jinja2
import pytest

from qwen35.tokenizer import DEFAULT_CHAT_TEMPLATE
from qwen35.tokenizer.chat_template import render_chat


def render(messages, **kwargs) -> str:
    kwargs.setdefault("add_generation_prompt", False)
    return render_chat(DEFAULT_CHAT_TEMPLATE, messages, **kwargs)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}

TOOL_LOOP_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris for 2 days?"},
    {
        "role": "assistant",
        "reasoning_content": "Need the tool.",
        "content": "Let me check.",
        "tool_calls": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": {"city": "Paris", "days": 2, "opts": {"units": "C"}, "flag": True, "missing": None},
                },
            }
        ],
    },
    {"role": "tool", "content": "Sunny, 22C"},
    {"role": "tool", "content": "second result"},
]

TOOL_LOOP_EXPECTED = """<|im_start|>system
# Tools

You have access to the following functions:

<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Get weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}
</tools>

If you choose to call a function ONLY reply in the following format with NO suffix:

<tool_call>
<function=example_function_name>
<parameter=example_parameter_1>
value_1
</parameter>
<parameter=example_parameter_2>
This is the value for the second parameter
that can span
multiple lines
</parameter>
</function>
</tool_call>

<IMPORTANT>
Reminder:
- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags
- Required parameters MUST be specified
- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after
- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls
</IMPORTANT>

Be brief.<|im_end|>
<|im_start|>user
Weather in Paris for 2 days?<|im_end|>
<|im_start|>assistant
<think>
Need the tool.
</think>

Let me check.

<tool_call>
<function=get_weather>
<parameter=city>
Paris
</parameter>
<parameter=days>
2
</parameter>
<parameter=opts>
{"units": "C"}
</parameter>
<parameter=flag>
True
</parameter>
<parameter=missing>
None
</parameter>
</function>
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
Sunny, 22C
</tool_response>
<tool_response>
second result
</tool_response><|im_end|>
<|im_start|>assistant
<think>
"""


def test_template_is_the_reference_text():
    # the official template, byte for byte (7,756 characters, no trailing newline).
    assert len(DEFAULT_CHAT_TEMPLATE) == 7756
    digest = hashlib.sha256(DEFAULT_CHAT_TEMPLATE.encode()).hexdigest()
    assert digest == "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715"
    assert "{%- if loop.index0 > ns.last_query_index %}\n" in DEFAULT_CHAT_TEMPLATE  # the restored line
    assert DEFAULT_CHAT_TEMPLATE.startswith("{%- set image_count = namespace(value=0) %}\n")
    assert DEFAULT_CHAT_TEMPLATE.endswith("        {{- '<think>\\n' }}\n    {%- endif %}\n{%- endif %}")


def test_thinking_on():
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Hi"}]
    assert render(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )


def test_thinking_off():
    messages = [{"role": "user", "content": "Hi"}]
    assert render(messages, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_multi_turn_drops_old_reasoning():
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
        {"role": "user", "content": "Q2"},
    ]
    assert render(messages, add_generation_prompt=True) == (
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )


def test_tool_loop_thinking_on():
    assert render(TOOL_LOOP_MESSAGES, tools=[WEATHER_TOOL], add_generation_prompt=True) == TOOL_LOOP_EXPECTED


def test_tool_loop_thinking_off():
    messages = [
        {"role": "user", "content": "Q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "f", "arguments": {"x": 1}}},
                {"function": {"name": "g", "arguments": {}}},
            ],
        },
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ]
    assert render(messages, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        "<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>\n"
        "<tool_call>\n<function=g>\n</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


@pytest.mark.parametrize(
    "messages,error",
    [
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "System message must be at the beginning"),
        ([{"role": "developer", "content": "a"}, {"role": "user", "content": "b"}], "Unexpected message role"),
        ([{"role": "system", "content": "a"}], "No user query found"),
    ],
)
def test_template_rejects(messages, error):
    with pytest.raises(jinja2.exceptions.TemplateError, match=error):
        render(messages, add_generation_prompt=True)
