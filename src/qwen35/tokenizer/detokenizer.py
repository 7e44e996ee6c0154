"""`IncrementalDetokenizer`: turn a stream of token ids into text deltas for streaming responses.

Qwen3.5 is byte-level BPE, so one character (CJK, emoji, accented letters) is often split over
several tokens, and a token can end in the middle of a character. Decoding the whole sequence
at every step and diffing is O(n) per token. Instead this reads each id's bytes
(`Tokenizer.token_bytes_table`, each id converted once) and feeds them to Python's incremental
UTF-8 decoder, which holds back an incomplete trailing character until its last byte arrives.
That is O(bytes of the new tokens) per step, and the concatenated output equals
`Tokenizer.decode` of all ids:

* invalid bytes inside the stream become U+FFFD as soon as they are known to be invalid;
* an incomplete character left at the end becomes U+FFFD on `flush()`;
* with `skip_special_tokens=True`, special tokens contribute no bytes (as in `decode`).

Deltas are whole code points, not whole grapheme clusters: an emoji ZWJ sequence or a letter
plus combining mark may arrive over several deltas, as in every other server.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from qwen35.tokenizer.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Stateful decoder for one sequence: `feed(ids) -> new text`, then `flush()` at the end."""

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._table = tokenizer.token_bytes_table
        self._skip = tokenizer.special_ids if skip_special_tokens else frozenset()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.num_tokens = 0  # ids fed so far, including skipped ones

    def feed(self, token_ids: int | Iterable[int]) -> str:
        """Add one or more ids; return the text they complete (possibly "")."""
        if isinstance(token_ids, int):
            token_ids = (token_ids,)
        table, skip, size = self._table, self._skip, len(self._table)
        chunks = []
        for token_id in token_ids:
            self.num_tokens += 1
            # Ids past the tokenizer (the model's padded embedding rows) decode to nothing, as in HF.
            if token_id not in skip and 0 <= token_id < size:
                chunks.append(table[token_id])
        return self._utf8.decode(b"".join(chunks)) if chunks else ""

    def flush(self) -> str:
        """End of stream: return held-back bytes of an incomplete character as U+FFFD (or "").

        The decoder is reset afterwards, so a later `feed` starts a fresh character stream.
        """
        return self._utf8.decode(b"", final=True)

    @property
    def has_pending_bytes(self) -> bool:
        """True while an incomplete character is being held back."""
        return bool(self._utf8.getstate()[0])
