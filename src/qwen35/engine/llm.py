"""`LLM`: the offline Python API, named as in vLLM.

    llm = LLM(model="ckpt", max_model_len=4096, max_num_seqs=16)
    outs = llm.generate(["Hello", "Bonjour"], SamplingParams(temperature=0.7, max_tokens=64))
    outs = llm.chat([{"role": "user", "content": "Hi"}], chat_template_kwargs={"enable_thinking": False})
"""

from __future__ import annotations

import itertools
from typing import Any

from ..tokenizer.chat_template import render_chat
from .llm_engine import EngineConfig, LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=str(model), **kwargs))
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | list[str] | list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run prompts (text or token ids) to completion; outputs come back in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        ids = []
        for prompt, p in zip(prompts, params):
            rid = f"llm-{next(self._ids)}"
            self.engine.add_request(rid, prompt, p or SamplingParams())
            ids.append(rid)
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
