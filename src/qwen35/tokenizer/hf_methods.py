"""The transformers tokenizer methods that scripts written for vLLM call on `LLM.get_tokenizer()`.

vLLM hands out the Hugging Face tokenizer, so offline scripts render prompts with
`tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`, count tokens with `tok(text)`
and look ids up with `tok.convert_tokens_to_ids("<|im_end|>")`. These methods give our `Tokenizer` the same
calls with transformers 5's defaults and results (`apply_chat_template` renders the raw messages as HF does and,
tokenized, returns a dict unless `return_dict=False`); options that change the result and are not here (padding,
truncation, tensors) are a TypeError naming them, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .chat_template import RESERVED_VARS, continue_final_message as continued, render_chat


class Encoding(dict):
    """transformers' BatchEncoding in small: a dict of `input_ids` and `attention_mask`, also as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _refuse(method: str, options: dict[str, Any]) -> None:
    set_ = sorted(k for k, v in options.items() if v not in (None, False))
    if set_:
        raise TypeError(f"{method}(): {set_[0]!r} is not supported here (qwen35's tokenizer returns plain lists)")


class HFMethods:
    """Mixed into `Tokenizer`, which supplies encode, decode, token_to_id, id_to_token, special_tokens and
    chat_template."""

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, *, padding: Any = False,
                 truncation: Any = None, max_length: int | None = None, return_tensors: Any = None) -> Encoding:
        """`input_ids` and `attention_mask` of a text, or lists of them for a list of texts."""
        _refuse("__call__", dict(padding=padding, truncation=truncation, max_length=max_length,
                                 return_tensors=return_tensors))
        if isinstance(text, str):
            ids = self.encode(text, add_special_tokens=add_special_tokens)
            return Encoding(input_ids=ids, attention_mask=[1] * len(ids))
        ids = self.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return Encoding(input_ids=ids, attention_mask=[[1] * len(x) for x in ids])

    def __len__(self) -> int:
        return self.vocab_size

    def apply_chat_template(self, conversation: list[dict] | list[list[dict]], tools: list[dict] | None = None,
                            documents: list[dict] | None = None, chat_template: str | None = None,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            tokenize: bool = True, return_dict: bool = True, *, padding: Any = False,
                            truncation: bool = False, max_length: int | None = None, return_tensors: Any = None,
                            return_assistant_tokens_mask: bool = False, **kwargs: Any) -> Any:
        """The conversation rendered with the chat template (`kwargs`, e.g. enable_thinking, reach it as
        variables): text when `tokenize=False`; otherwise ids, in an `Encoding` unless `return_dict=False`. A
        list of conversations gives a list of each (ids: one `Encoding` of lists)."""
        _refuse("apply_chat_template", dict(documents=documents, padding=padding, truncation=truncation,
                                            max_length=max_length, return_tensors=return_tensors,
                                            return_assistant_tokens_mask=return_assistant_tokens_mask))
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        reserved = [k for k in RESERVED_VARS if k in kwargs]
        if reserved:
            raise TypeError(f"apply_chat_template(): {reserved[0]!r} is an argument, not a template variable")
        batch = bool(conversation) and not isinstance(conversation[0], dict)
        texts = []
        for messages in conversation if batch else [conversation]:
            text = render_chat(chat_template or self.chat_template, list(messages), tools=tools,
                               add_generation_prompt=add_generation_prompt, **kwargs)
            texts.append(continued(text, messages) if continue_final_message else text)
        if not tokenize:
            return texts if batch else texts[0]
        ids = [self.encode(t) for t in texts]
        if not return_dict:
            return ids if batch else ids[0]
        mask = [[1] * len(x) for x in ids]
        return Encoding(input_ids=ids, attention_mask=mask) if batch else \
            Encoding(input_ids=ids[0], attention_mask=mask[0])

    def batch_decode(self, sequences: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in sequences]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | None | list[str | None]:
        """Token strings (byte-level spelling, `Ġworld`) of one id or a list of them."""
        if isinstance(ids, int):
            return self.id_to_token(ids)
        return [self.id_to_token(i) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | None | list[int | None]:
        if isinstance(tokens, str):
            return self.token_to_id(tokens)
        return [self.token_to_id(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    @property
    def bos_token_id(self) -> None:  # Qwen has no BOS token
        return None
