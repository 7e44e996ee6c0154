"""Qwen3.5 tokenization: `Tokenizer` (encode/decode, special ids, chat template, HF-layout save)
and `IncrementalDetokenizer` (streaming decode that never splits a UTF-8 character).

`DEFAULT_CHAT_TEMPLATE` is the official Qwen3.5 chat template (thinking on by default). Prefer
the checkpoint's own `chat_template.jinja`, which `Tokenizer.from_pretrained` loads.
"""

from qwen35.tokenizer.detokenizer import IncrementalDetokenizer
from qwen35.tokenizer.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer

__all__ = ["DEFAULT_CHAT_TEMPLATE", "IncrementalDetokenizer", "Tokenizer"]
