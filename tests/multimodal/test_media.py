"""Media from data URLs and local files, and decoding images: every bad input is a MediaError saying why.

HTTP fetching has its own file (test_media_http.py).
"""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib

import pytest
from PIL import Image

from qwen35.multimodal.inputs import MediaError
from qwen35.multimodal.media import MAX_IMAGE_PIXELS, MediaPolicy, decode_image, fetch, fetch_all


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 6)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(out, fmt)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds a few bytes of pixel data: what a decompression bomb
    looks like to a parser before it decompresses."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


POLICY = MediaPolicy()


# ---- data URLs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,media_type", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_data_url_image_round_trips(fmt, media_type):
    raw = image_bytes(fmt)
    assert fetch(data_url(raw, media_type), POLICY, "image") == raw
    image = decode_image(raw)
    assert image.size == (8, 6) and image.format == fmt


def test_data_url_tolerates_line_breaks_in_base64():
    raw = image_bytes()
    b64 = base64.encodebytes(raw).decode()  # 76-character lines, as some clients send
    assert "\n" in b64 and fetch(f"data:image/png;base64,{b64}", POLICY) == raw


@pytest.mark.parametrize("url,message", [
    ("data:image/png;base64,@@not base64@@", "not valid base64"),
    ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),  # bad padding
    ("data:text/plain;base64,aGVsbG8=", "media type is 'text/plain'; an image needs image/*"),
    ("data:;base64,aGVsbG8=", "media type is 'missing'"),
    ("data:image/png,rawbytes", "only base64 data URLs are supported"),
    ("data:image/png;base64", "needs a ','"),
    ("data:image/png;base64,", "is empty"),
    ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk", "base64 data goes in a data URL"),
    ("ftp://example.com/a.png", "not a data:, http(s):// or file:// URL"),
    ("", "the URL is empty"),
])
def test_bad_data_urls(url, message):
    with pytest.raises(MediaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fetch(url, POLICY, "image")


def test_data_url_kind_must_match():
    with pytest.raises(MediaError, match="a video needs video/"):
        fetch(data_url(image_bytes()), POLICY, "video")
    assert fetch(data_url(b"\0\0\0 ftypisom", "video/mp4"), POLICY, "video") == b"\0\0\0 ftypisom"


def test_data_url_size_limit():
    small = MediaPolicy(max_image_bytes=100)
    with pytest.raises(MediaError, match="larger than the limit of 100 bytes"):
        fetch(data_url(b"x" * 101), small)
    with pytest.raises(MediaError, match="larger than the limit of 100 bytes"):
        fetch(data_url(b"x" * 10_000), small)  # refused before decoding
    assert fetch(data_url(b"x" * 100), small) == b"x" * 100


def test_error_messages_shorten_long_urls():
    with pytest.raises(MediaError) as e:
        fetch("data:text/plain;base64," + "A" * 100_000, POLICY)
    assert len(str(e.value)) < 300 and "100023 characters" in str(e.value)


# ---- file:// ----------------------------------------------------------------------------------------------

@pytest.fixture
def media_dir(tmp_path):
    allowed = tmp_path / "media"
    (allowed / "sub dir").mkdir(parents=True)
    (allowed / "sub dir" / "a.png").write_bytes(image_bytes())
    (tmp_path / "secret.png").write_bytes(b"secret")
    return allowed


def test_file_urls_are_refused_without_an_allowed_path(media_dir):
    with pytest.raises(MediaError, match="file:// URLs are refused .*--allowed-local-media-path"):
        fetch((media_dir / "sub dir" / "a.png").as_uri(), POLICY)


def test_file_url_inside_the_allowed_path(media_dir):
    policy = MediaPolicy(allowed_local_media_path=media_dir)
    url = (media_dir / "sub dir" / "a.png").as_uri()
    assert "%20" in url and fetch(url, policy) == image_bytes()
    with pytest.raises(MediaError, match="no such file"):
        fetch((media_dir / "missing.png").as_uri(), policy)


@pytest.mark.parametrize("target", ["../secret.png", "sub dir/../../secret.png", "../missing.png",
                                    "file:///etc/passwd", "file://localhost/etc/passwd"])
def test_file_url_outside_the_allowed_path(media_dir, target):
    policy = MediaPolicy(allowed_local_media_path=media_dir)
    url = target if target.startswith("file:") else "file://" + str(media_dir) + "/" + target
    with pytest.raises(MediaError, match="is not under the allowed local media path"):
        fetch(url, policy)


def test_symlinks_are_followed_and_checked(media_dir):
    policy = MediaPolicy(allowed_local_media_path=media_dir)
    (media_dir / "escape.png").symlink_to(media_dir.parent / "secret.png")
    (media_dir / "escape-dir").symlink_to(media_dir.parent)
    (media_dir / "inside.png").symlink_to(media_dir / "sub dir" / "a.png")
    for name in ("escape.png", "escape-dir/secret.png"):
        with pytest.raises(MediaError, match="is not under the allowed local media path"):
            fetch((media_dir / name).as_uri(), policy)
    assert fetch((media_dir / "inside.png").as_uri(), policy) == image_bytes()


def test_allowed_path_given_through_a_symlink(media_dir, tmp_path):
    (tmp_path / "link").symlink_to(media_dir)
    policy = MediaPolicy(allowed_local_media_path=tmp_path / "link")
    assert fetch((media_dir / "sub dir" / "a.png").as_uri(), policy) == image_bytes()


def test_file_url_special_files_and_hosts(media_dir):
    policy = MediaPolicy(allowed_local_media_path=media_dir, max_image_bytes=100)
    os.mkfifo(media_dir / "pipe")
    with pytest.raises(MediaError, match="not a regular file"):
        fetch((media_dir / "pipe").as_uri(), policy)  # and does not hang waiting for a writer
    with pytest.raises(MediaError, match="not a regular file"):
        fetch((media_dir / "sub dir").as_uri(), policy)
    (media_dir / "big.png").write_bytes(b"x" * 101)
    with pytest.raises(MediaError, match="101 bytes, over the limit of 100"):
        fetch((media_dir / "big.png").as_uri(), policy)
    with pytest.raises(MediaError, match="not host 'example.com'"):
        fetch("file://example.com" + str(media_dir / "big.png"), policy)


# ---- decoding images -----------------------------------------------------------------------------------

def test_decode_refuses_what_is_not_an_image():
    with pytest.raises(MediaError, match="not an image in a supported format"):
        decode_image(b"hello, world")
    with pytest.raises(MediaError, match="not an image in a supported format"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")  # EPS would run Ghostscript
    with pytest.raises(MediaError, match="not an image"):
        decode_image(b"")


def test_decode_refuses_a_truncated_png():
    raw = image_bytes(size=(64, 64))
    with pytest.raises(MediaError, match="PNG data is corrupt or truncated"):
        decode_image(raw[: len(raw) // 2])


def test_decode_refuses_a_truncated_jpeg():
    out = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(out, "JPEG")
    with pytest.raises(MediaError, match="corrupt or truncated"):
        decode_image(out.getvalue()[:400])


def test_decode_refuses_decompression_bombs(monkeypatch):
    with pytest.raises(MediaError, match="decompression bomb"):
        decode_image(png_header(100_000, 100_000))  # PIL's own error: over twice its limit
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(MediaError, match="over the limit"):
        decode_image(png_header(10_000, 10_000))  # between PIL's limit and twice it: PIL only warns
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a library switched PIL's check off: ours still holds
    with pytest.raises(MediaError, match=f"over the limit of {MAX_IMAGE_PIXELS:,}"):
        decode_image(png_header(100_000, 100_000))


# ---- several items ----------------------------------------------------------------------------------------

def test_fetch_all_keeps_order_and_raises_the_first_failure():
    urls = [("image", data_url(bytes([i]) * 3)) for i in range(6)]
    assert fetch_all(urls, POLICY) == [bytes([i]) * 3 for i in range(6)]
    with pytest.raises(MediaError, match="only base64"):
        fetch_all([urls[0], ("image", "data:image/png,x"), ("video", "nope")], POLICY)
    assert fetch_all([], POLICY) == []


def test_policy_checks_its_numbers():
    with pytest.raises(ValueError, match="max_image_bytes must be positive"):
        MediaPolicy(max_image_bytes=0)
    assert MediaPolicy(allowed_media_domains=(" Example.COM. ", "")).allowed_media_domains == ("example.com",)
    p = MediaPolicy()
    assert (p.max_bytes("image"), p.max_bytes("video")) == (20 << 20, 200 << 20)
    assert (p.timeout_s("image"), p.timeout_s("video")) == (10.0, 30.0)


def test_file_url_oddities(media_dir):
    policy = MediaPolicy(allowed_local_media_path=media_dir)
    (media_dir / "loop-a").symlink_to(media_dir / "loop-b")
    (media_dir / "loop-b").symlink_to(media_dir / "loop-a")
    with pytest.raises(MediaError, match="cannot be resolved"):
        fetch((media_dir / "loop-a").as_uri(), policy)
    with pytest.raises(MediaError, match="NUL character"):
        fetch((media_dir / "a").as_uri() + "%00.png", policy)
    with pytest.raises(MediaError, match="absolute path"):
        fetch("file:relative.png", policy)
