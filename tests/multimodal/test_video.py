"""Video: PyAV decoding and frame sampling equal to transformers' (read_video_pyav + Qwen3VLVideoProcessor
.sample_frames); patches, grid and timestamps equal to Qwen3VLVideoProcessor's.

Pixel tolerance: we resize frames with PIL, transformers with torchvision's uint8 antialiased bicubic. Same
filter, different integer rounding: at most 2 levels apart (2/127.5 after normalising) on well under 1% of the
values. Frames already of the target size are not resized by either: there the patches are bit-identical.
"""

from __future__ import annotations

import io
from functools import partial

import av
import numpy as np
import pytest

from qwen35.multimodal.inputs import MediaError
from qwen35.multimodal.processor_config import ProcessorConfig
from qwen35.multimodal.video import load_video, process_video, sample_indices, smart_resize_video, video_item

LEVEL = 1 / 127.5  # one uint8 level after (x/255 - 0.5) / 0.5


def _write_video(path, codec: str, fmt: str, frames: int = 30, rate: int = 10, height: int = 60,
                 width: int = 100, options: dict | None = None) -> None:
    """A moving pattern over noise, `frames` frames at `rate` fps."""
    rng = np.random.default_rng(1)
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            img[:, : (i * 3) % width, 1] = 255
            img[..., 0] = (i * 8) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """3 s at 10 fps, 60x100 (resized to 64x96): an MP4 (frame count in the header) and a WebM (none)."""
    d = tmp_path_factory.mktemp("clips")
    _write_video(d / "clip.mp4", "mpeg4", "mp4")
    _write_video(d / "clip.webm", "libvpx", "webm")
    return {"mp4": d / "clip.mp4", "webm": d / "clip.webm"}


def _hf_video(hf, frames, video_fps, indices, **kwargs):
    """transformers' (patches, grid, timestamps) for already sampled frames."""
    from transformers.video_utils import VideoMetadata

    metadata = VideoMetadata(total_num_frames=len(frames), fps=video_fps, frames_indices=np.asarray(indices))
    out = hf.video(frames, video_metadata=[metadata], do_sample_frames=False, return_metadata=True, **kwargs)
    stamps = hf.processor._calculate_timestamps(np.asarray(indices), video_fps, hf.video.temporal_patch_size)
    return out["pixel_values_videos"].numpy(), out["video_grid_thw"][0].tolist(), stamps


def _assert_close_pixels(ours, ref):
    assert ours.shape == ref.shape and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    assert diff.max() <= 2 * LEVEL + 1e-6, diff.max() / LEVEL
    assert (diff > 1e-6).mean() < 0.01


@pytest.mark.parametrize("kwargs", [{}, {"fps": 4.0}, {"fps": 0.5}, {"num_frames": 7}])
def test_decode_and_sampling_match_transformers(hf, cfg, clips, kwargs):
    from transformers.video_utils import read_video_pyav

    ref_kwargs = {**kwargs, "fps": None} if "num_frames" in kwargs else kwargs  # as transformers needs it
    ref_frames, metadata = read_video_pyav(str(clips["mp4"]), partial(hf.video.sample_frames, **ref_kwargs))
    frames, times = load_video(clips["mp4"], cfg, **kwargs)
    np.testing.assert_array_equal(frames, ref_frames)
    np.testing.assert_array_equal(times, np.asarray(metadata.frames_indices) / metadata.fps)
    webm_frames, webm_times = load_video(clips["webm"].read_bytes(), cfg, **kwargs)  # no count in the header
    assert webm_frames.shape == frames.shape
    np.testing.assert_array_equal(webm_times, times)


@pytest.mark.parametrize("kwargs", [{}, {"fps": 4.0}, {"num_frames": 7}])
def test_video_matches_transformers(hf, cfg, clips, kwargs):
    frames, times = load_video(clips["mp4"], cfg, **kwargs)
    indices = np.rint(times * 10).astype(int)
    ref_pixels, ref_grid, ref_stamps = _hf_video(hf, frames, 10.0, indices)
    item = process_video(frames, times, cfg)
    assert item.kind == "video" and list(item.grid_thw) == ref_grid
    assert item.grid_thw[1:] == (4, 6)  # 60x100 -> 64x96
    assert item.timestamps == pytest.approx(ref_stamps, abs=1e-12)
    _assert_close_pixels(item.pixels, ref_pixels)
    streamed = video_item(clips["mp4"].read_bytes(), cfg, **kwargs)  # resizes frame by frame: same result
    np.testing.assert_array_equal(streamed.pixels, item.pixels)
    assert streamed.timestamps == item.timestamps and streamed.digest == item.digest


@pytest.mark.parametrize("count, height, width", [(5, 64, 96), (3, 20, 700), (8, 500, 340)])
def test_frames_match_transformers(hf, cfg, rng, count, height, width):
    """Frames given directly: odd counts padded with the last frame, tiny frames scaled up, large ones down."""
    frames = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    indices = np.arange(count) * 3
    limit = 800_000  # a per-request max_pixels, to make the 500x340 clip shrink
    ref_pixels, ref_grid, ref_stamps = _hf_video(hf, frames, 25.0, indices,
                                                 size={"shortest_edge": cfg.video_min_pixels, "longest_edge": limit})
    item = process_video(frames, indices / 25.0, cfg, max_pixels=limit)
    assert list(item.grid_thw) == ref_grid
    assert item.timestamps == pytest.approx(ref_stamps, abs=1e-12)
    if (height, width) == (64, 96):  # already the target size: neither side resizes
        np.testing.assert_array_equal(item.pixels, ref_pixels)
    _assert_close_pixels(item.pixels, ref_pixels)


def test_smart_resize_video_matches_transformers(rng):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as ref

    for cap in (False, True):
        cfg = ProcessorConfig(cap_pixels_per_frame=cap)
        for _ in range(1500):
            n, h, w = int(rng.integers(2, 800)), int(rng.integers(1, 4000)), int(rng.integers(1, 4000))
            hi = cfg.video_max_pixels
            if cap:  # transformers applies the cap in resize(), before its smart_resize
                hi = max(min(768 * 32 * 32, hi // n), int(cfg.video_min_pixels * 1.05)) * n
            try:
                expect = ref(n, h, w, temporal_factor=2, factor=32, min_pixels=cfg.video_min_pixels, max_pixels=hi)
            except ValueError:
                with pytest.raises(MediaError):
                    smart_resize_video(n, h, w, cfg)
                continue
            assert smart_resize_video(n, h, w, cfg) == expect, (n, h, w, cap)


def test_sampling_bounds(cfg):
    assert len(sample_indices(30, 10.0, cfg)) == 6  # 3 s at 2 fps
    assert len(sample_indices(3, 10.0, cfg)) == 3  # min_frames 4, but only 3 frames exist
    assert len(sample_indices(10, 30.0, cfg)) == 4  # 0.33 s: min_frames
    assert len(sample_indices(100_000, 30.0, cfg)) == 768  # max_frames
    assert sample_indices(5, 10.0, cfg, num_frames=8).tolist() == [0, 1, 1, 2, 2, 3, 3, 4]
    with pytest.raises(ValueError, match="mutually exclusive"):
        sample_indices(30, 10.0, cfg, fps=1.0, num_frames=4)
    with pytest.raises(ValueError, match="num_frames must be"):
        sample_indices(30, 10.0, cfg, num_frames=769)


def test_overstated_frame_count(cfg, tmp_path):
    """An MP4 cut short, its index up front: the header still promises 30 frames. transformers returns the
    sampled frames it reaches with the timestamps of all it meant to sample; we sample again from what decodes."""
    path = tmp_path / "cut.mp4"
    _write_video(path, "mpeg4", "mp4", height=64, width=96, options={"movflags": "faststart"})
    data = path.read_bytes()[: path.stat().st_size * 2 // 3]
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 30
        decodable = sum(1 for _ in container.decode(video=0))
    assert 4 <= decodable < 28
    expect = sample_indices(decodable, 10.0, cfg) / 10
    frames, times = load_video(data, cfg)
    assert len(frames) == len(expect) and times.tolist() == expect.tolist()
    item = video_item(data, cfg)
    assert item.grid_thw[0] == (len(expect) + 1) // 2 and len(item.timestamps) == item.grid_thw[0]


def test_video_errors(cfg, clips, tmp_path, monkeypatch):
    with pytest.raises(MediaError, match="cannot open video"):
        load_video(b"\x00" * 1000, cfg)
    with pytest.raises(MediaError, match="cannot open video"):
        video_item(tmp_path / "missing.mp4", cfg)
    one = tmp_path / "one.mp4"
    _write_video(one, "mpeg4", "mp4", frames=1)
    with pytest.raises(MediaError, match="1 frame"):
        video_item(one, cfg)
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
    with pytest.raises(MediaError, match="not a video container"):
        load_video(audio, cfg)
    monkeypatch.chdir(tmp_path)  # FFmpeg's script formats read other files, relative to the working directory
    _write_video(tmp_path / "secret.mp4", "mpeg4", "mp4", frames=4)
    for script in ("ffconcat version 1.0\nfile 'secret.mp4'\nfile 'secret.mp4'\n",
                   "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nsecret.mp4\n#EXT-X-ENDLIST\n"):
        with pytest.raises(MediaError, match="not a video container"):
            load_video(script.encode(), cfg)
    audio_only = tmp_path / "tone.mkv"
    with av.open(str(audio_only), "w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        for packet in stream.encode(frame):
            container.mux(packet)
    with pytest.raises(MediaError, match="no video stream"):
        load_video(audio_only, cfg)
    with pytest.raises(MediaError, match=r"longer than 1e-09 s \(at frame 1 of"):  # --media-decode-timeout
        video_item(clips["mp4"], cfg, timeout_s=1e-9)


def test_containers_are_told_by_their_first_bytes():
    from qwen35.multimodal.video import container_format

    m2ts = bytearray(400)
    m2ts[4] = m2ts[196] = m2ts[388] = 0x47
    ts = bytearray(400)
    ts[0] = ts[188] = ts[376] = 0x47
    assert container_format(bytes(m2ts)) == container_format(bytes(ts)) == "mpegts"
    assert container_format(b"\x00\x00\x00\x18styp" + bytes(8)) == "mov"  # a fragmented MP4 segment
    assert container_format(b"\x1aE\xdf\xa3" + bytes(8)) == "matroska"
    assert container_format(b"ffconcat version 1.0\n") is None and container_format(b"#EXTM3U\n") is None


def test_a_video_too_long_for_the_context_is_refused_at_its_first_frame(cfg, clips):
    """The early check counts each temporal patch's markers and timestamp too (at their fewest), so a video
    they push past the context is refused before its frames are decoded, not after."""
    item = video_item(clips["mp4"], cfg)
    patches = item.grid_thw[0]
    with pytest.raises(MediaError, match="would take"):
        video_item(clips["mp4"], cfg, max_tokens=item.num_tokens + 8 * patches - 1)
    assert video_item(clips["mp4"], cfg, max_tokens=item.num_tokens + 8 * patches).num_tokens == item.num_tokens
    with pytest.raises(ValueError, match="uint8"):
        process_video(np.zeros((4, 32, 32, 3), np.float32), [0, 1, 2, 3], cfg)
