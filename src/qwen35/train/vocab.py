"""A small byte-level BPE vocabulary of our own, trained on the synthetic corpus with the `tokenizers` library.

The demo model cannot afford the real 248k-row embedding (it would be 30x the whole model), so it gets a
vocabulary of a few thousand ids learnt from the text it is trained on. Everything else is Qwen3.5's: the
same normaliser, pre-tokenizer regex (digits one by one, which arithmetic needs) and byte-level alphabet
(`tokenizer.vocab.with_qwen_pipeline`), and the same 33 special tokens with the same strings, numbered after
the BPE ids as in the real vocabulary. Special tokens are cut out of the training text, so no merge spans one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import AddedToken, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from ..tokenizer import Tokenizer
from ..tokenizer.vocab import SPECIAL_TOKENS, with_qwen_pipeline

SPECIALS = tuple(content for _, content in sorted(SPECIAL_TOKENS))
_SPLIT = re.compile("|".join(re.escape(t) for t in SPECIALS))


def _plain_pieces(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        yield from (piece for piece in _SPLIT.split(text) if piece)


def train_vocab(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A Qwen3.5-style tokenizer of `vocab_size` ids (BPE ids first, then the special tokens) learnt from
    `texts`. Deterministic for the same texts."""
    bpe_size = vocab_size - len(SPECIALS)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if bpe_size < len(alphabet):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for the 256 byte tokens and "
                         f"{len(SPECIALS)} special tokens")
    backend = with_qwen_pipeline(HFTokenizer(BPE(fuse_unk=False)))
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, initial_alphabet=alphabet, show_progress=False,
                                  min_frequency=2)
    backend.train_from_iterator(_plain_pieces(texts), trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return Tokenizer(backend, source="a vocabulary trained on the synthetic corpus (qwen35.train.vocab)")


def merged_ids(tok: Tokenizer) -> range:
    """The ids of a trained vocabulary's merged BPE tokens: after the byte alphabet, before the special tokens."""
    return range(len(pre_tokenizers.ByteLevel.alphabet()), tok.vocab_size - len(SPECIALS))
