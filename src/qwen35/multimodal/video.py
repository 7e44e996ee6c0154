"""Videos: decode (PyAV), sample frames, and turn them into a `MediaItem` of patches with timestamps.

Matches transformers' Qwen3VLVideoProcessor and its PyAV reader:
* sampling: `fps` frames per second of video (default 2), at least `min_frames` and at most `max_frames`
  (and never more than the video has), spread evenly over the whole clip by `linspace(0, n - 1, k).round()`;
  a frame's time is index / the stream's average frame rate.
* size: one size for the whole clip from a 3-D `smart_resize` (frames x height x width within the video
  pixel bounds, sides multiples of 32), then bicubic, (x - mean) / std, and `processor.patchify`, frames
  padded to an even count by repeating the last.
* timestamps: one per temporal patch (two frames), the mean of its first and last frame's times; the prompt
  writes them as `<{t:.1f} seconds>` (prompt.py).

Where we differ: frames are resized with PIL (numpy and PIL only in the server process, no torch), where
transformers uses torchvision's uint8 antialiased bicubic: the same filter, integer rounding differs by at
most one level (1/127.5 after normalising) on a fraction of a percent of the values. `video_item` resizes each
frame as it is decoded, so a long 4K clip costs one full-size frame of memory, not hundreds.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Iterator

import av
import numpy as np
from PIL import Image

from .inputs import MediaError, MediaItem
from .processor import MAX_ASPECT, check_tokens, patchify
from .processor_config import ProcessorConfig

Source = bytes | str | os.PathLike
DEFAULT_VIDEO_FPS = 24.0  # transformers' assumption when a stream states no frame rate


def sample_indices(total_frames: int, video_fps: float, cfg: ProcessorConfig, fps: float | None = None,
                   num_frames: int | None = None) -> np.ndarray:
    """Indices of the frames to keep, ascending (repeats only when `num_frames` exceeds the video's)."""
    if fps is not None and num_frames is not None:
        raise ValueError("fps and num_frames are mutually exclusive: give one")
    if total_frames < 1:
        raise MediaError("video has no frames")
    if num_frames is None:
        fps = cfg.fps if fps is None else fps
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        num_frames = min(max(int(total_frames / video_fps * fps), cfg.min_frames), cfg.max_frames, total_frames)
    elif isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 1 <= num_frames <= cfg.max_frames:
        # transformers takes any count; we bound it, as a request could otherwise ask for millions of frames
        raise ValueError(f"num_frames must be an integer in [1, {cfg.max_frames}], got {num_frames!r}")
    return np.linspace(0, total_frames - 1, num_frames).round().astype(np.int64)


def smart_resize_video(num_frames: int, height: int, width: int, cfg: ProcessorConfig) -> tuple[int, int]:
    """(height, width) for every frame: multiples of patch*merge, frames*height*width within the video
    pixel bounds (with `cap_pixels_per_frame`, qwen-vl-utils' per-frame budget instead)."""
    f, tf = cfg.factor, cfg.temporal_patch_size
    if num_frames < tf:
        raise MediaError(f"video has {num_frames} frame(s) after sampling; at least {tf} are needed")
    if height < 1 or width < 1:
        raise MediaError(f"video frames have no pixels ({width}x{height})")
    lo, hi = cfg.video_min_pixels, cfg.video_max_pixels
    if cfg.cap_pixels_per_frame:
        per_frame = max(min(cfg.max_video_tokens * f * f, hi // num_frames), int(lo * 1.05))
        hi = per_frame * num_frames
    if height < f or width < f:  # tiny frames: first scaled up so the short side is one block
        scale = max(f / height, f / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise MediaError(f"video aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_ASPECT}")
    h, w = round(height / f) * f, round(width / f) * f
    t = round(num_frames / tf) * tf
    if t * h * w > hi:
        beta = math.sqrt(num_frames * height * width / hi)
        h = max(f, math.floor(height / beta / f) * f)
        w = max(f, math.floor(width / beta / f) * f)
    elif t * h * w < lo:
        beta = math.sqrt(lo / (num_frames * height * width))
        h = math.ceil(height * beta / f) * f
        w = math.ceil(width * beta / f) * f
    return h, w


def load_video(data: Source, cfg: ProcessorConfig, fps: float | None = None,
               num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode and sample a video file (bytes or a path) at full resolution: (frames [F, H, W, 3] uint8,
    seconds of each frame [F] float64). Memory grows with F * H * W: `video_item` is the bounded path.
    A path goes to FFmpeg as given, and FFmpeg also opens URLs: a server hands over bytes, never a client's
    string."""
    frames, times = _decode(data, cfg, fps, num_frames, lambda frame, _count: frame.to_ndarray(format="rgb24"))
    if len({f.shape for f in frames}) > 1:
        raise MediaError("video frame size changes mid-stream")
    return np.stack(frames), times


# Each temporal patch also takes <|vision_start|>, <|vision_end|> and its timestamp, `<1.5 seconds>`: at least 6
# tokens where digits and punctuation are pre-tokenised apart (Qwen's rule; prompt.py writes them)
PATCH_EXTRA_TOKENS = 2 + 6


def video_tokens(num_frames: int, h: int, w: int, cfg: ProcessorConfig) -> int:
    """Prompt tokens of `num_frames` sampled frames resized to h x w (frames pad to the temporal patch), with
    each temporal patch's markers and timestamp counted at their fewest: a video this says is too long is."""
    patches = -(-num_frames // cfg.temporal_patch_size)
    return patches * ((h // cfg.factor) * (w // cfg.factor) + PATCH_EXTRA_TOKENS)


def process_video(frames: np.ndarray, times: np.ndarray | list[float], cfg: ProcessorConfig,
                  min_pixels: int | None = None, max_pixels: int | None = None,
                  max_tokens: int | None = None) -> MediaItem:
    """Sampled frames [F, H, W, 3] uint8 and their times in seconds -> `MediaItem(kind="video")`.
    `min_pixels` / `max_pixels` override the config's video bounds for this request."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if len(times) != len(frames):
        raise ValueError(f"{len(times)} times for {len(frames)} frames")
    cfg = cfg.with_pixels(min_pixels, max_pixels, video=True)
    h, w = smart_resize_video(len(frames), frames.shape[1], frames.shape[2], cfg)
    check_tokens(video_tokens(len(frames), h, w, cfg), max_tokens, f"the video ({len(frames)} frames of {w}x{h})")
    return _item([_resize(f, h, w) for f in frames], np.asarray(times, np.float64), cfg)


def video_item(data: Source, cfg: ProcessorConfig, fps: float | None = None, num_frames: int | None = None,
               min_pixels: int | None = None, max_pixels: int | None = None,
               max_tokens: int | None = None, timeout_s: float | None = None) -> MediaItem:
    """`process_video(*load_video(data, ...))`, the same result, resizing each frame as it is decoded.
    `timeout_s`: decoding that takes longer stops with a MediaError (None: no limit). Every frame up to the last
    one sampled is decoded, whatever the sampled size: a long clip of 4K frames costs minutes of CPU."""
    cfg = cfg.with_pixels(min_pixels, max_pixels, video=True)
    sizes: dict[int, tuple[int, int]] = {}  # frames sampled -> (h, w), from the first frame: one size per clip

    def convert(frame: av.VideoFrame, count: int) -> np.ndarray:
        if count not in sizes:  # a second decoding pass samples a different count
            sizes[count] = smart_resize_video(count, frame.height, frame.width, cfg)
            check_tokens(video_tokens(count, *sizes[count], cfg), max_tokens,
                         f"the video ({count} frames of {sizes[count][1]}x{sizes[count][0]})")
        return _resize(frame.to_ndarray(format="rgb24"), *sizes[count])

    frames, times = _decode(data, cfg, fps, num_frames, convert, timeout_s)
    return _item(frames, times, cfg)


# ---- pieces -------------------------------------------------------------------------------------


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((w, h), resample=Image.Resampling.BICUBIC))


def _item(frames: list[np.ndarray], times: np.ndarray, cfg: ProcessorConfig) -> MediaItem:
    """Resized uint8 frames -> normalised patches and per-temporal-patch timestamps."""
    tp = cfg.temporal_patch_size
    if pad := -len(frames) % tp:  # pad here, in uint8, so patchify need not copy the float clip
        frames = frames + [frames[-1]] * pad
        times = np.concatenate([times, np.repeat(times[-1:], pad)])
    # transformers folds 1/255 into mean and std (x - 255*mean) / (255*std), in float32: tabulated per level
    scale = np.float32(1.0 / cfg.video_rescale_factor)
    mean = np.asarray(cfg.video_mean, np.float32) * scale
    std = np.asarray(cfg.video_std, np.float32) * scale
    lut = (np.arange(256, dtype=np.float32)[None, :] - mean[:, None]) / std[:, None]
    clip = np.stack(frames)  # [F, h, w, 3] uint8
    chw = np.stack([lut[c][clip[..., c]] for c in range(3)], axis=1)  # [F, 3, h, w] float32
    pixels, grid = patchify(chw, cfg)
    stamps = (times[0::tp] + times[tp - 1::tp]) / 2  # first and last frame of each temporal patch
    return MediaItem(kind="video", pixels=pixels, grid_thw=grid, merge_size=cfg.merge_size,
                     timestamps=tuple(float(t) for t in stamps))


def _decode(data: Source, cfg: ProcessorConfig, fps: float | None, num_frames: int | None,
            convert: Callable[[av.VideoFrame, int], np.ndarray],
            timeout_s: float | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Sampled frames through `convert(frame, number of frames sampled)`, and their times in seconds.
    Two passes only when the container overstates its frame count. `timeout_s`: for both passes together."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _open(data) as container:
        stream = _video_stream(container)
        total = stream.frames or _count_frames(data)
        video_fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_VIDEO_FPS)
    for _ in range(2):
        indices = sample_indices(total, video_fps, cfg, fps, num_frames)
        frames: list[np.ndarray] = []
        decoded = 0
        with _open(data) as container:
            for decoded, frame in enumerate(_frames(container), 1):
                if deadline is not None and time.monotonic() > deadline:
                    raise MediaError(f"decoding the video took longer than {timeout_s:g} s (at frame {decoded} of "
                                     f"{total}; --media-decode-timeout): send a shorter or smaller clip")
                i = decoded - 1
                while len(frames) < len(indices) and indices[len(frames)] == i:
                    _check_frame_size(frame)
                    frames.append(convert(frame, len(indices)))
                if len(frames) == len(indices):
                    return frames, indices / video_fps
        if decoded == 0:
            raise MediaError("video has no decodable frames")
        total = decoded  # fewer frames than the header said: sample again from what is there
    raise MediaError("video frame count is inconsistent between passes")


def container_format(head: bytes) -> str | None:
    """The demuxer for a video whose file starts with `head` (its first 512 bytes), or None when it is not one
    of the containers videos come in. The video is then opened with that demuxer alone: left to guess from
    the content, FFmpeg also takes its script formats, and an `ffconcat` script sent as a video made the
    server read files below its working directory."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"styp", b"sidx", b"uuid", b"pnot"):
        return "mov"  # MP4, MOV, 3GP, fragmented MP4 segments
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # MKV, WebM
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf"  # WMV
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"  # MPEG program stream
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpegts"
    if len(head) > 388 and head[4] == head[196] == head[388] == 0x47:
        return "mpegts"  # M2TS / AVCHD: 192-byte packets
    return None


def _open(data: Source) -> av.container.InputContainer:
    in_memory = isinstance(data, (bytes, bytearray, memoryview))
    try:
        if in_memory:
            head = bytes(data[:512])
        else:
            with open(data, "rb") as f:
                head = f.read(512)
    except OSError as e:
        raise MediaError(f"cannot open video: {e}") from None
    fmt = container_format(head)
    if fmt is None:
        raise MediaError("cannot open video: not a video container this server reads (MP4/MOV, WebM/MKV, AVI, "
                         "GIF, Ogg, FLV, WMV, MPEG-PS/TS)")
    try:
        return av.open(io.BytesIO(data) if in_memory else os.fspath(data), format=fmt)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"cannot open video: {e}") from None


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise MediaError("no video stream in the file")
    return container.streams.video[0]


def _frames(container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    stream = _video_stream(container)
    stream.thread_type = "AUTO"  # frame-threaded decoding: same frames, faster
    try:
        yield from container.decode(stream)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"cannot decode video: {e}") from None


def _count_frames(data: Source) -> int:
    """Frames of a stream whose header does not say (WebM, some MKV): count its packets, without decoding."""
    with _open(data) as container:
        stream = _video_stream(container)
        try:
            return sum(1 for packet in container.demux(stream) if packet.size)
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"cannot read video: {e}") from None


def _check_frame_size(frame: av.VideoFrame) -> None:
    """PIL's decompression-bomb limit, applied to each frame."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and frame.width * frame.height > 2 * limit:
        raise MediaError(f"video frame of {frame.width}x{frame.height} pixels exceeds the limit ({2 * limit})")
