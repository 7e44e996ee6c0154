"""Multimodal fixtures: our processor config and tokenizer, and transformers' Qwen3VLProcessor as the oracle.

transformers 5.23 runs its Qwen3-VL video processor only with torchvision, which this project does not install.
`hf` stands in for the three torchvision calls it makes, each with what torchvision itself runs for our inputs
(uint8 RGB frames on CPU), so everything else -- frame sampling, smart_resize, padding, patch order,
normalisation, timestamps, placeholder text -- is transformers' own code:
* resize: torchvision's `resize_image` passes uint8 bicubic straight to `F.interpolate(antialias=True,
  align_corners=False)` on CPU and returns the input when the size is unchanged;
* normalize: `(x - mean) / std` per channel;
* convert_to_rgb: a no-op on 3-channel frames.
It also skips `ProcessorMixin.check_argument_for_proper_class`, which without torchvision fails for any
Qwen3VLProcessor (it resolves the torchvision-only video processor base class).
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from qwen35.multimodal.processor_config import IMAGE_FILE, VIDEO_FILE, ProcessorConfig


@pytest.fixture(scope="session")
def cfg() -> ProcessorConfig:
    return ProcessorConfig()


@pytest.fixture(scope="session")
def tok():
    """The built-in Qwen3.5 tokenizer (its vocabulary from the run's cache, tests/conftest.py)."""
    from qwen35.tokenizer import Tokenizer

    return Tokenizer.from_vocab()


@pytest.fixture(scope="session")
def processor_dir(tmp_path_factory, tok, cfg):
    """Tokenizer and the official processor files, as `qwen35 init` writes them."""
    import json

    d = tmp_path_factory.mktemp("processor")
    tok.save(d)
    (d / IMAGE_FILE).write_text(json.dumps(cfg.image_processor_dict()))
    (d / VIDEO_FILE).write_text(json.dumps(cfg.video_processor_dict()))
    return d


@pytest.fixture(scope="package")  # the stand-ins are undone once this directory's tests are done
def hf(processor_dir):
    """transformers' processors for `processor_dir`: .image (Qwen2VLImageProcessorPil), .video
    (Qwen3VLVideoProcessor), .processor (Qwen3VLProcessor), .tokenizer."""
    pytest.importorskip("transformers")
    import torch
    import torch.nn.functional as F
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLProcessor
    from transformers.image_processing_backends import TorchvisionBackend
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.processing_utils import ProcessorMixin
    from transformers.video_processing_utils import BaseVideoProcessor

    def resize(self, image, size, resample=None, antialias=True, **kwargs):
        assert image.dtype == torch.uint8, "torchvision's native uint8 bicubic path is what we stand in for"
        if (size.height, size.width) == tuple(image.shape[-2:]):
            return image
        flat = image.reshape(-1, *image.shape[-3:])
        out = F.interpolate(flat, size=[size.height, size.width], mode="bicubic", align_corners=False,
                            antialias=True)
        return out.reshape(*image.shape[:-2], size.height, size.width)

    def normalize(self, image, mean, std, inplace=False, **kwargs):
        return (image - torch.as_tensor(mean).view(-1, 1, 1)) / torch.as_tensor(std).view(-1, 1, 1)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TorchvisionBackend, "resize", resize)
        mp.setattr(TorchvisionBackend, "normalize", normalize)
        mp.setattr(BaseVideoProcessor, "convert_to_rgb", lambda self, video: video)
        mp.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: type(arg))
        image = AutoImageProcessor.from_pretrained(processor_dir)
        video = Qwen3VLVideoProcessor.from_pretrained(processor_dir, cap_pixels_per_frame=False)
        tokenizer = AutoTokenizer.from_pretrained(processor_dir)
        processor = Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video)
        yield types.SimpleNamespace(image=image, video=video, processor=processor, tokenizer=tokenizer)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
