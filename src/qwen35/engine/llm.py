"""`LLM`: the offline Python API, named as in vLLM.

    llm = LLM(model="ckpt", max_model_len=4096, max_num_seqs=16)
    outs = llm.generate(["Hello", "Bonjour"], SamplingParams(temperature=0.7, max_tokens=64))
    outs = llm.chat([{"role": "user", "content": "Hi"}], chat_template_kwargs={"enable_thinking": False})

A prompt is a string, a list of token ids, or one of vLLM's prompt dicts `{"prompt": "..."}` /
`{"prompt_token_ids": [...]}`; `generate` takes one prompt or a list of them (mixed kinds are fine).
A prompt dict may carry a `cache_salt` (its prefix-cache entries are shared only with prompts of the same
salt) and images and videos, as in vLLM:

    llm.generate({"prompt": "<|vision_start|><|image_pad|><|vision_end|>What is this?",
                  "multi_modal_data": {"image": pil_image}, "mm_processor_kwargs": {"max_pixels": 512 * 512}})

(an image: a PIL image or encoded bytes; a video: encoded bytes or uint8 frames [F, H, W, 3]; either: a
`MediaItem`; one or a list per kind, matched to the prompt's placeholders in order). `chat` takes OpenAI
`image_url` / vLLM `video_url` parts (data URLs, http(s), and file:// under `allowed_local_media_path`).
A request the engine fails comes back finished with `finish_reason="error"` and `RequestOutput.error` set.

As vLLM's: without `sampling_params`, requests sample with `get_default_sampling_params()` (the checkpoint's
generation_config.json; `generation_config="vllm"`: neutral); logprobs are `{token id: Logprob}` (`.logprob`,
`.rank`, `.decoded_token`); `use_tqdm` shows a progress bar on a terminal; `get_tokenizer()`; and vLLM's
`LLM(...)` keywords for GPU memory, CUDA graphs, swap space and remote code are accepted and have nothing to do.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from tqdm import tqdm

from ..multimodal.inputs import MediaItem
from ..multimodal.load import load_media, to_item
from ..multimodal.media import MediaPolicy
from ..multimodal.processor import ProcessorConfig
from ..server.messages import normalize_chat
from ..tokenizer.chat_template import RESERVED_VARS, render_chat
from ..tokenizer.chat_template import continue_final_message as continued
from .llm_engine import EngineConfig, LLMEngine
from .outputs import RequestOutput, ranked
from .sampling_params import SamplingParams

log = logging.getLogger("qwen35.engine")

Prompt = Union[str, list[int], dict]
# vLLM's LLM(...) keywords with nothing to do here: no GPU memory pool to size, no CUDA graphs to turn off, no
# swap space, no remote code to run, no statistics log
NOTHING_TO_DO = ("gpu_memory_utilization", "enforce_eager", "swap_space", "trust_remote_code", "disable_log_stats",
                 "disable_custom_all_reduce", "tokenizer_mode")


class LLM:
    def __init__(self, model: str | None = None, allowed_local_media_path: str | None = None, *,
                 generation_config: str = "auto", hf_overrides: dict | None = None, tokenizer: str | None = None,
                 kv_cache_dtype: str = "auto", **kwargs: Any) -> None:
        """`model`: a checkpoint directory or a Hugging Face id found in the local HF cache (nothing is downloaded;
        default: the embedded demo model, `default_model.py`). `generation_config`: where the default sampling
        comes from, as `qwen35 serve --generation-config`. `hf_overrides`: merged into config.json, as
        `--hf-overrides`. `tokenizer`: another directory (or HF id) whose tokenizer.json and chat template to use.
        Other keywords: `EngineConfig`'s."""
        from ..loading.model_path import resolve_model, tokenizer_dir
        from ..server.params import load_generation_defaults

        if model is None:
            from ..default_model import default_model_dir

            model = default_model_dir()
        else:
            model = resolve_model(str(model)).path
        ignored = [k for k in NOTHING_TO_DO if kwargs.pop(k, None) is not None]
        if ignored:
            log.info("LLM(%s): nothing to do on this engine", ", ".join(ignored))
        if tokenizer is not None:
            try:
                kwargs["tokenizer"] = str(tokenizer_dir(str(tokenizer)))
            except (ValueError, OSError) as e:
                raise ValueError(f"tokenizer={tokenizer!r}: {e}") from None
        if kv_cache_dtype != "auto":
            raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r}: the K/V cache is kept in the model's dtype ('auto')")
        if hf_overrides is not None:
            from ..server.model_overrides import apply_overrides

            kwargs["hf_config"] = apply_overrides(json.loads((Path(model) / "config.json").read_text()), hf_overrides)
        self.engine = LLMEngine(EngineConfig(model=str(model), **kwargs))
        self._ids = itertools.count()
        self.processor = ProcessorConfig.from_checkpoint(model)
        # offline use: private and loopback URLs are the user's own; local files only under the given directory;
        # no decoding time limit (it keeps a server's other requests going; here there are none to keep)
        self.media_policy = MediaPolicy(allowed_local_media_path=allowed_local_media_path, allow_private_urls=True,
                                        video_decode_timeout_s=math.inf)
        self._defaults = load_generation_defaults(model, generation_config)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def get_tokenizer(self):
        """The checkpoint's tokenizer (`qwen35.tokenizer.Tokenizer`: encode, decode, the chat template, and the
        transformers methods scripts call: `apply_chat_template`, `tok(text)`, `convert_tokens_to_ids`, ...)."""
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """What requests without their own `sampling_params` sample with: the generation config's temperature,
        top_p, top_k, min_p, penalties and max_new_tokens, neutral values elsewhere (vLLM's method)."""
        return SamplingParams(**self._defaults)

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run prompts to completion (see the module docstring for their forms); outputs come back in prompt
        order. A bad prompt or request raises ValueError and runs nothing."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                 and isinstance(prompts[0], int)):
            prompts = [prompts]  # a single prompt
        if not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a prompt or a list of prompts, got {type(prompts).__name__}")
        salts = [p.get("cache_salt") if isinstance(p, dict) else None for p in prompts]
        return self._run([_prompt(p) for p in prompts], [self._media(p) for p in prompts], sampling_params,
                         use_tqdm, salts)

    def _run(self, prompts: list[str | list[int]], media: list[list[MediaItem] | None],
             sampling_params: SamplingParams | Sequence[SamplingParams] | None,
             use_tqdm: bool = True, salts: list[str | None] | None = None) -> list[RequestOutput]:
        """Add every prompt with its items (all or none), run the engine until they finish, in prompt order.
        `salts`: each prompt dict's `cache_salt` (vLLM's), set on a copy of its params."""
        params = list(sampling_params) if isinstance(sampling_params, Sequence) else [sampling_params] * len(prompts)
        if any(p is None for p in params):
            default = self.get_default_sampling_params()
            params = [default if p is None else p for p in params]
        if not all(isinstance(p, SamplingParams) for p in params):
            raise ValueError("sampling_params must be a SamplingParams or a list of them, got "
                             f"{type(next(p for p in params if not isinstance(p, SamplingParams))).__name__}")
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        for i, salt in enumerate(salts or ()):
            if salt is not None:
                params[i] = dataclasses.replace(params[i], cache_salt=salt)  # validated there
        ids: list[str] = []
        done: dict[str, RequestOutput] = {}
        try:
            for prompt, p, items in zip(prompts, params, media):
                rid = f"llm-{next(self._ids)}"
                self.engine.add_request(rid, prompt, p, items)
                ids.append(rid)
            with tqdm(total=len(ids), desc="generating", unit="prompt", leave=False,
                      disable=not use_tqdm or not sys.stderr.isatty()) as bar:
                while self.engine.has_unfinished():
                    for out in self.engine.step():
                        if out.finished:
                            done[out.request_id] = out
                            bar.update()
        except BaseException:  # a bad prompt, Ctrl-C, an engine error: nothing of this call is left to run unseen
            for rid in ids:
                if rid not in done:
                    self.engine.abort(rid)
            raise
        return [self._with_logprob_objects(done[r], p) for r, p in zip(ids, params)]

    def _with_logprob_objects(self, out: RequestOutput, params: SamplingParams) -> RequestOutput:
        """vLLM's `{token id: Logprob}` in place of the engine's `{token id: float}`."""
        text = self._logprob_text if params.detokenize else lambda t: None  # vLLM: no decoded_token without text
        for c in out.outputs:
            if c.logprobs is not None:
                c.logprobs = [ranked(e, params.logprobs, text) for e in c.logprobs]
        if out.prompt_logprobs is not None:
            out.prompt_logprobs = [None if e is None else ranked(e, params.prompt_logprobs, text)
                                   for e in out.prompt_logprobs]
        return out

    def _logprob_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def chat(self, messages: list[dict] | list[list[dict]], sampling_params: SamplingParams | None = None,
             use_tqdm: bool = True, *, tools: list[dict] | None = None, chat_template: str | None = None,
             chat_template_kwargs: dict | None = None, add_generation_prompt: bool = True,
             continue_final_message: bool = False, mm_processor_kwargs: dict | None = None) -> list[RequestOutput]:
        """Render each conversation with the chat template (`chat_template`: this one's text instead of the
        checkpoint's) and generate. As vLLM's `LLM.chat`: `continue_final_message` (with
        `add_generation_prompt=False`) continues the last, assistant message; `mm_processor_kwargs` apply to
        its images and videos."""
        if not isinstance(use_tqdm, bool):  # tools used to be the third argument: never drop them silently
            raise TypeError(f"chat(): use_tqdm must be a bool, got {type(use_tqdm).__name__} (pass tools=...)")
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        kwargs = dict(chat_template_kwargs or {})
        reserved = [k for k in RESERVED_VARS if k in kwargs]
        if reserved:
            raise ValueError(f"chat_template_kwargs may not set {reserved[0]!r}: it is an argument of chat()")
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts, media = [], []
        for conv in convs:
            clean, refs = normalize_chat(conv)
            text = render_chat(chat_template or self.tokenizer.chat_template, clean, tools=tools,
                               add_generation_prompt=add_generation_prompt, **kwargs)
            prompts.append(continued(text, clean) if continue_final_message else text)
            media.append(load_media(refs, self.media_policy, self.processor, mm_processor_kwargs) if refs else None)
        return self._run(prompts, media, sampling_params, use_tqdm)

    def _media(self, p: Any) -> list[MediaItem] | None:
        """The items of a prompt dict's `multi_modal_data`, in the order of the prompt's placeholders."""
        if not isinstance(p, dict) or "multi_modal_data" not in p:
            return None
        data, kwargs = p["multi_modal_data"], p.get("mm_processor_kwargs")
        if not isinstance(data, dict) or set(data) - {"image", "video"}:
            raise ValueError("multi_modal_data must be a dict with 'image' and/or 'video' entries")
        items = {kind: [to_item(kind, v, self.processor, kwargs)
                        for v in (data[kind] if isinstance(data[kind], (list, tuple)) else [data[kind]])]
                 for kind in ("image", "video") if kind in data}
        text = p.get("prompt")
        ids = self.tokenizer.encode(text) if isinstance(text, str) else list(p.get("prompt_token_ids") or [])
        return _in_prompt_order(ids, items, self.tokenizer)


def _prompt(p: Any) -> str | list[int]:
    """A text or token-id prompt from any accepted form (vLLM's TextPrompt / TokensPrompt dicts included)."""
    if isinstance(p, str):
        return p
    if isinstance(p, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise ValueError("a token-id prompt (prompt_token_ids) must be a list of integers")
        return p
    if isinstance(p, dict):
        keys = set(p) - {"multi_modal_data", "mm_processor_kwargs", "cache_salt"}
        if keys == {"prompt"} and isinstance(p["prompt"], str):
            return p["prompt"]
        if keys == {"prompt_token_ids"} and isinstance(p["prompt_token_ids"], list):
            return _prompt(p["prompt_token_ids"])
        if keys in ({"input_ids"}, {"input_ids", "attention_mask"}) and isinstance(p["input_ids"], list):
            return _prompt(p["input_ids"])  # what `tokenizer.apply_chat_template(...)` returns (transformers 5)
        raise ValueError(f"a prompt dict must be {{'prompt': str}} or {{'prompt_token_ids': list[int]}}, "
                         f"got keys {sorted(map(str, p))}")
    raise ValueError(f"a prompt must be a string, a list of token ids or a prompt dict, got {type(p).__name__}")


def _in_prompt_order(ids: list[int], items: dict[str, list[MediaItem]], tokenizer) -> list[MediaItem]:
    """Images and videos interleaved as their placeholders appear: each run of `<|image_pad|>` /
    `<|video_pad|>` tokens takes the next item of its kind."""
    pads = {tokenizer.token_to_id("<|image_pad|>"): "image", tokenizer.token_to_id("<|video_pad|>"): "video"}
    queues = {kind: list(v) for kind, v in items.items()}
    out, prev = [], None
    for t in ids:
        kind = pads.get(t)
        if kind is not None and t != prev and queues.get(kind):
            out.append(queues[kind].pop(0))
        prev = t
    left = sum(len(q) for q in queues.values())
    if left:
        raise ValueError(f"multi_modal_data has {left} more item(s) than the prompt has placeholders "
                         "(<|vision_start|><|image_pad|><|vision_end|> per image, <|video_pad|> per video)")
    return out
