"""OpenAI request bodies (pydantic), with the vLLM extras clients send via `extra_body`.

Unknown fields are accepted and ignored (as vLLM does) so that clients sending vendor extras keep working;
wrong types and out-of-range values are 400s naming the field. Lists are capped (`limits.py`) so that one
body cannot buy unbounded work. Responses are plain dicts built in `chat.py` and `app.py`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .limits import (MAX_ALLOWED_TOKEN_IDS, MAX_BAD_WORDS, MAX_LOGIT_BIAS, MAX_MESSAGES, MAX_PROMPTS, MAX_STOP,
                     MAX_TOOLS)

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")  # OpenAI's and vLLM's values
THINKING_OFF = ("none", "minimal")  # the efforts that turn thinking off

INT64 = dict(ge=-(2**63), le=2**63 - 1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=16)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    seed: int | None = Field(None, **INT64)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    user: str | None = None
    logit_bias: dict[str, float] | None = None  # token id (as a JSON string key) -> bias in [-100, 100]
    allowed_token_ids: list[int] | None = Field(None, min_length=1, max_length=MAX_ALLOWED_TOKEN_IDS)
    bad_words: list[str] | None = Field(None, max_length=MAX_BAD_WORDS)
    truncate_prompt_tokens: int | None = Field(None, ge=-1)  # keep the prompt's last k tokens (-1: all that fit)
    return_tokens_as_token_ids: bool | None = None  # logprobs name tokens 'token_id:N' (None: the server's flag)
    prompt_logprobs: int | None = Field(None, ge=0, le=20)  # vLLM: each prompt token's logprob and top k
    return_token_ids: bool = False  # vLLM: the prompt's and each choice's token ids in the response
    cache_salt: str | None = Field(None, min_length=1, max_length=1024)  # vLLM: prefix cache shared per salt
    # vLLM's structured outputs: {"json" | "regex" | "choice" | "grammar": ...}, and the older guided_* fields
    structured_outputs: dict[str, Any] | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return v

    @field_validator("prompt_logprobs")
    @classmethod
    def _prompt_logprobs(cls, v, info):
        if v and info.data.get("stream"):
            raise ValueError("prompt_logprobs are not available when stream is true (as in vLLM)")
        return v

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _truncate(cls, v):
        if v == 0:
            raise ValueError("must be -1 (as many as fit) or at least 1")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        if v is not None and len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} logit_bias entries")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    @property
    def continuous_usage(self) -> bool:
        """vLLM's `continuous_usage_stats`: usage so far in every chunk (with include_usage)."""
        return bool(self.stream_options and self.stream_options.get("continuous_usage_stats"))


class ChatCompletionRequest(_Body):
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None  # DashScope-style top-level switch
    # OpenAI's: "none" / "minimal" turn thinking off when nothing else says (vLLM and llama.cpp read "none" so)
    reasoning_effort: Literal[REASONING_EFFORTS] | None = None
    chat_template: str | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    include_reasoning: bool = True
    thinking_token_budget: int | None = Field(None, ge=0)
    mm_processor_kwargs: dict[str, Any] | None = None  # vLLM: per-request min_pixels / max_pixels / fps / num_frames

    @field_validator("tools")
    @classmethod
    def _tools(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("tools must not be empty (omit the field instead)")
        for i, tool in enumerate(v):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                raise ValueError(f"tools[{i}] needs {{'type': 'function', 'function': {{'name': ...}}}}")
        return v


class CompletionRequest(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)  # 0: with echo only, the prompt alone (scoring it)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None  # refused: Qwen3.5 has no fill-in-the-middle format
    best_of: int | None = None  # refused unless 1: server-side best-of-n is not implemented

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list) and v and not isinstance(v[0], int) and len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request")
        return v


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = Field(None, max_length=MAX_MESSAGES)
    tools: list[dict[str, Any]] | None = Field(None, max_length=MAX_TOOLS)
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int]


ToolChoice = Literal["none", "auto", "required"]

