"""`TokenBytes`: the bytes each token id decodes to, converted on first use.

Byte-level BPE spells every byte as a printable character (`bytes_to_unicode`), so a token's bytes are its
string read back through that table; a token with a character outside the table (an added token such as
"a b") decodes to its own UTF-8, as HF's ByteLevel decoder does. Converting the whole 248k vocabulary up
front took ~0.5 s of Python at the first request of every engine (and 46 s of the test suite); a reply
touches a few hundred distinct ids, so each id is converted when first asked for and kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders

from qwen35.tokenizer.vocab import bytes_to_unicode

_BYTE_OF = {c: b for b, c in enumerate(bytes_to_unicode())}


class TokenBytes(Sequence[bytes]):
    """`table[id]`: the bytes of token `id` (b"" for an id in range with no token); `len(table)` is one past
    the largest id (of the model's vocabulary, numbered from 0 without gaps as BPE files are, and of the added
    tokens). Safe to share between threads: a slot is only ever filled with the same value."""

    def __init__(self, backend: HFTokenizer, source: str) -> None:
        if not isinstance(backend.decoder, decoders.ByteLevel):
            raise ValueError(f"{source}: per-token bytes need a byte-level BPE tokenizer (decoder ByteLevel), "
                             f"got decoder {type(backend.decoder).__name__}")
        self._backend = backend
        added = backend.get_added_tokens_decoder()
        size = max(backend.get_vocab_size(with_added_tokens=False), max(added, default=-1) + 1)
        self._bytes: list[bytes | None] = [None] * size

    def __len__(self) -> int:
        return len(self._bytes)

    def __getitem__(self, token_id: int) -> bytes:  # type: ignore[override]  # ids only, no slices
        found = self._bytes[token_id]
        if found is None:
            found = self._bytes[token_id] = self._convert(token_id)
        return found

    def _convert(self, token_id: int) -> bytes:
        token = self._backend.id_to_token(token_id)
        if token is None:
            return b""
        try:
            return bytes([_BYTE_OF[c] for c in token])
        except KeyError:
            return token.encode("utf-8")
