"""`LLM`: the offline Python API, named as in vLLM.

    llm = LLM(model="ckpt", max_model_len=4096, max_num_seqs=16)
    outs = llm.generate(["Hello", "Bonjour"], SamplingParams(temperature=0.7, max_tokens=64))
    outs = llm.chat([{"role": "user", "content": "Hi"}], chat_template_kwargs={"enable_thinking": False})

A prompt is a string, a list of token ids, or one of vLLM's prompt dicts `{"prompt": "..."}` /
`{"prompt_token_ids": [...]}`; `generate` takes one prompt or a list of them (mixed kinds are fine).
A request the engine fails comes back finished with `finish_reason="error"` and `RequestOutput.error` set.
"""

from __future__ import annotations

import itertools
from typing import Any, Union

from ..tokenizer.chat_template import render_chat
from .llm_engine import EngineConfig, LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams


Prompt = Union[str, list[int], dict]


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=str(model), **kwargs))
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | list[Prompt],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run prompts to completion (see the module docstring for their forms); outputs come back in prompt
        order. A bad prompt or request raises ValueError and runs nothing."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                 and isinstance(prompts[0], int)):
            prompts = [prompts]  # a single prompt
        if not isinstance(prompts, list):
            raise ValueError(f"prompts must be a prompt or a list of prompts, got {type(prompts).__name__}")
        prompts = [_prompt(p) for p in prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        ids: list[str] = []
        try:
            for prompt, p in zip(prompts, params):
                rid = f"llm-{next(self._ids)}"
                self.engine.add_request(rid, prompt, p or SamplingParams())
                ids.append(rid)
        except BaseException:
            for rid in ids:  # all or nothing: do not leave the earlier prompts to run unseen
                self.engine.abort(rid)
            raise
        done: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished:
                    done[out.request_id] = out
        return [done[r] for r in ids]

    def chat(self, messages: list[dict] | list[list[dict]], sampling_params: SamplingParams | None = None,
             tools: list[dict] | None = None, chat_template_kwargs: dict | None = None) -> list[RequestOutput]:
        """Render each conversation with the checkpoint's chat template and generate."""
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = [render_chat(self.tokenizer.chat_template, c, tools=tools, add_generation_prompt=True,
                               **(chat_template_kwargs or {})) for c in convs]
        return self.generate(prompts, sampling_params)


def _prompt(p: Any) -> str | list[int]:
    """A text or token-id prompt from any accepted form (vLLM's TextPrompt / TokensPrompt dicts included)."""
    if isinstance(p, str):
        return p
    if isinstance(p, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise ValueError("a token-id prompt (prompt_token_ids) must be a list of integers")
        return p
    if isinstance(p, dict):
        if set(p) == {"prompt"} and isinstance(p["prompt"], str):
            return p["prompt"]
        if set(p) == {"prompt_token_ids"} and isinstance(p["prompt_token_ids"], list):
            return _prompt(p["prompt_token_ids"])
        raise ValueError(f"a prompt dict must be {{'prompt': str}} or {{'prompt_token_ids': list[int]}}, "
                         f"got keys {sorted(map(str, p))}")
    raise ValueError(f"a prompt must be a string, a list of token ids or a prompt dict, got {type(p).__name__}")
