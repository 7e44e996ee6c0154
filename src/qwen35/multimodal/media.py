"""The bytes of the images and videos a request names, and an image decoded from them.

A request names media by URL, as OpenAI's `image_url` and vLLM's `video_url` parts do. The sources, as vLLM
takes them:
- `data:image/png;base64,...`: base64 only, and the media type must be the kind asked for (image/* for an
  image). Raw base64 without `data:` is refused, as vLLM refuses it;
- http and https: fetched under the SSRF guard of `http_get.py` (public addresses only unless
  `allow_private_urls`; `allowed_media_domains`; the connection pinned to the checked address against DNS
  rebinding; redirects re-checked; size and total time bounded);
- `file://`: only with `allowed_local_media_path`, and only files whose real path (every symlink followed)
  lies under it; anything else is refused.
Every failure is a MediaError whose message names the item and the reason: the server answers it with a 400.

Limits (MediaPolicy's defaults, chosen for a CPU server): an image may be 20 MiB and take 10 s to fetch, a
video 200 MiB and 30 s (vLLM's timeouts are 5 s and 30 s, $VLLM_IMAGE_FETCH_TIMEOUT / $VLLM_VIDEO_FETCH_TIMEOUT;
a slow image host should not fail a request the user could have waited for). A decoded image may have
MAX_IMAGE_PIXELS pixels.

Blocking by design: the server calls `fetch`, `fetch_all` and `decode_image` on worker threads, never on the
event loop. `fetch_all` fetches one request's items a few at a time; decoding is left to the caller, which
knows which processor each kind goes to (videos: `video.py`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from . import http_get
from .inputs import MediaError

KINDS = ("image", "video")
MiB = 1 << 20
# PIL's own default limit (~89.5 Mpx, 0.25 GiB as 24-bit RGB), enforced here as an error whatever
# PIL.Image.MAX_IMAGE_PIXELS is set to: PIL only warns below twice its limit, and a library may have set it
# to None. Qwen3.5's processor shrinks images to at most ~16 Mpx anyway.
MAX_IMAGE_PIXELS = 89_478_485
# The formats PIL may try. A closed list on purpose: PIL also opens EPS by running Ghostscript, and a few
# dozen rarely used formats whose parsers see far less use than these. JPEG includes MPO (multi-picture).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FETCH_WORKERS = 4  # items of one request fetched at a time


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may come from and how much of it: the server's --allowed-local-media-path,
    --allow-private-media-urls, --allowed-media-domains, --media-fetch-timeout and --media-decode-timeout."""

    allowed_local_media_path: Path | None = None  # file:// URLs only under this directory; None: refused
    allow_private_urls: bool = False  # True: http(s) to loopback / private / link-local ... addresses too
    allowed_media_domains: tuple[str, ...] | None = None  # None: any host; else exactly these host names
    max_image_bytes: int = 20 * MiB
    max_video_bytes: int = 200 * MiB
    image_timeout_s: float = 10.0  # a whole fetch: lookups, connects, redirects and the body
    video_timeout_s: float = 30.0
    video_decode_timeout_s: float = 60.0  # decoding and resizing one video's frames
    max_redirects: int = 3

    def __post_init__(self) -> None:
        if self.allowed_media_domains is not None:
            domains = tuple(d.strip().lower().rstrip(".") for d in self.allowed_media_domains if d.strip())
            object.__setattr__(self, "allowed_media_domains", domains)
        if self.allowed_local_media_path is not None:
            object.__setattr__(self, "allowed_local_media_path", Path(self.allowed_local_media_path))
        for name in ("max_image_bytes", "max_video_bytes", "image_timeout_s", "video_timeout_s",
                     "video_decode_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MediaPolicy.{name} must be positive, got {getattr(self, name)}")
        if self.max_redirects < 0:
            raise ValueError(f"MediaPolicy.max_redirects must be >= 0, got {self.max_redirects}")

    def max_bytes(self, kind: str) -> int:
        return self.max_video_bytes if kind == "video" else self.max_image_bytes

    def timeout_s(self, kind: str) -> float:
        return self.video_timeout_s if kind == "video" else self.image_timeout_s


def _shown(url: str) -> str:
    return url if len(url) <= 100 else f"{url[:80]}... ({len(url)} characters)"


# ---- the three sources ------------------------------------------------------------------------------------

def _from_data_url(url: str, kind: str, max_bytes: int) -> bytes:
    where = f"{kind} {_shown(url)}"
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise MediaError(f"{where}: a data URL needs a ',' before its data")
    media_type, *params = (p.strip().lower() for p in header.split(";"))
    if "base64" not in params:
        raise MediaError(f"{where}: only base64 data URLs are supported (data:{kind}/...;base64,...)")
    if not media_type.startswith(kind + "/"):
        raise MediaError(f"{where}: the data URL's media type is {media_type or 'missing'!r}; "
                         f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} needs {kind}/*")
    if len(payload) // 4 * 3 > max_bytes + 3:  # before decoding: base64 is 4 characters per 3 bytes
        raise MediaError(f"{where}: is larger than the limit of {max_bytes:,} bytes")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)  # line breaks are common, and harmless
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"{where}: the data URL is not valid base64 ({e})") from None
    if len(data) > max_bytes:
        raise MediaError(f"{where}: is larger than the limit of {max_bytes:,} bytes")
    if not data:
        raise MediaError(f"{where}: the data URL is empty")
    return data


def _read_regular_file(fd: int, where: str, max_bytes: int) -> bytes:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise MediaError(f"{where}: is not a regular file")
    if info.st_size > max_bytes:
        raise MediaError(f"{where}: is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
    data = bytearray()
    while len(data) <= max_bytes:  # the file may have grown since fstat
        chunk = os.read(fd, min(MiB, max_bytes + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) > max_bytes:
        raise MediaError(f"{where}: is larger than the limit of {max_bytes:,} bytes")
    return bytes(data)


def _from_file(url: str, kind: str, root: Path | None, max_bytes: int) -> bytes:
    where = f"{kind} {_shown(url)}"
    if root is None:
        raise MediaError(f"{where}: file:// URLs are refused (start the server with --allowed-local-media-path "
                         "DIR to read media files under DIR)")
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(f"{where}: a file URL must name a local file (file:///path), not host {parts.netloc!r}")
    path = Path(urllib.request.url2pathname(parts.path))
    if not path.is_absolute():
        raise MediaError(f"{where}: a file URL needs an absolute path (file:///path)")
    root = root.resolve()
    outside = MediaError(f"{where}: is not under the allowed local media path {root} "
                         "(--allowed-local-media-path)")
    if "\0" in str(path):
        raise MediaError(f"{where}: the path contains a NUL character")
    try:
        real = path.resolve()  # every symlink followed: the check is on where the file really is
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise MediaError(f"{where}: the path cannot be resolved ({e})") from None
    if not real.is_relative_to(root):
        raise outside  # said before looking at the file: no hint whether files outside exist
    try:
        # O_NOFOLLOW: the last component cannot have become a symlink since resolve(); O_NONBLOCK: opening a
        # FIFO does not wait for a writer (it is refused as not a regular file)
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise MediaError(f"{where}: no such file") from None
    except OSError as e:
        raise MediaError(f"{where}: cannot be opened ({e.strerror})") from None
    try:
        opened = f"/proc/self/fd/{fd}"  # Linux: where the open file really is
        if os.path.exists(opened) and not Path(os.readlink(opened)).is_relative_to(root):
            raise outside  # a directory above it was swapped for a symlink between resolve() and open()
        return _read_regular_file(fd, where, max_bytes)
    finally:
        os.close(fd)


def fetch(url: str, policy: MediaPolicy, kind: str = "image") -> bytes:
    """The bytes `url` names (a data URL, http(s) or file://), under `policy`; MediaError on anything wrong."""
    if kind not in KINDS:
        raise MediaError(f"unknown media kind {kind!r}; expected one of {KINDS}")
    if not isinstance(url, str) or not url.strip():
        raise MediaError(f"{kind}: the URL is empty")
    url = url.strip()
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "data":
        return _from_data_url(url, kind, policy.max_bytes(kind))
    if scheme in ("http", "https"):
        return http_get.download(url, what=kind, max_bytes=policy.max_bytes(kind), timeout_s=policy.timeout_s(kind),
                                 max_redirects=policy.max_redirects, allow_private=policy.allow_private_urls,
                                 allowed_domains=policy.allowed_media_domains)
    if scheme == "file":
        return _from_file(url, kind, policy.allowed_local_media_path, policy.max_bytes(kind))
    hint = f" (base64 data goes in a data URL: data:{kind}/...;base64,...)" if not scheme else ""
    raise MediaError(f"{kind} {_shown(url)}: not a data:, http(s):// or file:// URL{hint}")


def fetch_all(items: Sequence[tuple[str, str]], policy: MediaPolicy,
              max_workers: int = FETCH_WORKERS) -> list[bytes]:
    """The bytes of every (kind, url) in `items`, in order, fetched `max_workers` at a time. A failure is
    raised once the items before it have arrived; fetches still under way end on their own time limits."""
    if len(items) <= 1:
        return [fetch(url, policy, kind) for kind, url in items]
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="qwen35-media")
    try:
        futures = [pool.submit(fetch, url, policy, kind) for kind, url in items]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ---- images -----------------------------------------------------------------------------------------------

def decode_image(data: bytes) -> Image.Image:
    """`data` as a loaded PIL image (its mode as stored; the first frame of an animation); MediaError for
    data that is not an image in IMAGE_FORMATS, is corrupt or truncated, or has more than MAX_IMAGE_PIXELS."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise MediaError(f"image: refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise MediaError(f"image: not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - PIL's parsers raise many types (OSError, struct.error, ...)
        raise MediaError(f"image: cannot be read: corrupt or truncated data, or an unsupported variant "
                         f"({type(e).__name__}: {e})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise MediaError(f"image: {width} x {height} is {width * height:,} pixels, over the limit of "
                         f"{MAX_IMAGE_PIXELS:,}")
    if width == 0 or height == 0:
        image.close()
        raise MediaError(f"image: has no pixels ({width} x {height})")
    try:
        image.load()
    except Exception as e:  # noqa: BLE001 - "image file is truncated", broken data streams, ...
        image.close()
        raise MediaError(f"image: the {image.format} data is corrupt or truncated ({type(e).__name__}: {e})") \
            from None
    return image
