"""Placeholder expansion equal to transformers' Qwen3VLProcessor, and the spans the engine fills."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from qwen35.multimodal.processor import process_image
from qwen35.multimodal.prompt import expand_placeholders, placeholder_spans
from qwen35.multimodal.video import process_video

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def media(cfg):
    """Two images and a 5-frame video (3 temporal patches, the last padded) with their transformers inputs."""
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((70, 90), (300, 64))]
    frames = rng.integers(0, 256, (5, 64, 96, 3), dtype=np.uint8)
    indices = np.array([0, 7, 15, 22, 29])
    video = process_video(frames, indices / 7.5, cfg)
    return images, frames, indices, [process_image(img, cfg) for img in images], video


def test_expansion_matches_transformers(hf, tok, media):
    from transformers.video_utils import VideoMetadata

    images, frames, indices, (first, second), video = media
    text = (f"<|im_start|>user\nLook: {IMAGE} then{VIDEO}and {IMAGE}\nWhat changed?<|im_end|>\n"
            "<|im_start|>assistant\n")
    metadata = VideoMetadata(total_num_frames=len(frames), fps=7.5, frames_indices=indices)
    ref = hf.processor(text=[text], images=images, videos=[frames], video_metadata=[metadata],
                       do_sample_frames=False)["input_ids"][0]
    ids = expand_placeholders(tok.encode(text), [first, video, second], tok)
    assert ids == list(ref)
    # the video reads <|vision_start|><0.0 seconds><|vision_start|>pads<|vision_end|>...<|vision_end|>
    video_part = tok.decode(ids).split("then", 1)[1].split("and", 1)[0]
    assert video_part.startswith("<|vision_start|><0.5 seconds><|vision_start|><|video_pad|>")
    assert video_part.count("seconds>") == 3 and video_part.endswith("<|vision_end|><|vision_end|>")


def test_spans(tok, media):
    _, _, _, (first, second), video = media
    image_id, video_id = tok.token_to_id("<|image_pad|>"), tok.token_to_id("<|video_pad|>")
    ids = expand_placeholders(tok.encode(f"a{IMAGE}b{VIDEO}c{IMAGE}"), [first, video, second], tok)
    spans = placeholder_spans(ids, [first, video, second], image_id, video_id)
    assert [len(s) for s in spans] == [1, 3, 1]
    assert spans[0][0][1] == first.num_tokens and spans[2][0][1] == second.num_tokens
    assert all(length == video.tokens_per_frame for _, length in spans[1])
    for item_spans, token in zip(spans, (image_id, video_id, image_id)):
        for offset, length in item_spans:
            assert ids[offset:offset + length] == [token] * length
            assert ids[offset - 1] == tok.token_to_id("<|vision_start|>")
    covered = sum(length for s in spans for _, length in s)
    assert covered == sum(1 for i in ids if i in (image_id, video_id))
    assert sum(length for _, length in spans[1]) == video.num_tokens


def test_mismatches_raise(tok, media):
    _, _, _, (first, second), video = media
    image_id, video_id = tok.token_to_id("<|image_pad|>"), tok.token_to_id("<|video_pad|>")
    one_image = tok.encode(f"x{IMAGE}y")
    with pytest.raises(ValueError, match="1 image\\(s\\) and 0 video\\(s\\) but 2 image"):
        expand_placeholders(one_image, [first, second], tok)
    with pytest.raises(ValueError, match="in a different order"):
        expand_placeholders(tok.encode(f"{IMAGE}{VIDEO}"), [video, first], tok)
    ids = expand_placeholders(one_image, [first], tok)
    with pytest.raises(ValueError, match="more placeholder tokens"):
        placeholder_spans(ids, [first, second], image_id, video_id)
    with pytest.raises(ValueError, match="left over"):
        placeholder_spans(ids + [image_id], [first], image_id, video_id)
    broken = list(ids)
    broken[ids.index(image_id) + 3] = 0
    with pytest.raises(ValueError, match="not contiguous"):
        placeholder_spans(broken + [image_id], [first], image_id, video_id)
    bad = dataclasses.replace(video, timestamps=video.timestamps[:-1], digest="x")
    with pytest.raises(ValueError, match="timestamps"):
        expand_placeholders(tok.encode(VIDEO), [bad], tok)


def test_processor_modules_do_not_import_torch():
    """The server process runs the processor and never imports torch (tests/test_imports.py)."""
    import subprocess
    import sys

    code = ("import sys, qwen35.multimodal.processor, qwen35.multimodal.video, qwen35.multimodal.prompt\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
