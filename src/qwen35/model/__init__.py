"""The Qwen3.5 text model: layers that own weights. Maths without weights lives in `qwen35.ops`."""

from ..ops.batch import ForwardBatch, SeqSpec
from .cache import ModelCache
from .qwen35 import Qwen35ForCausalLM

__all__ = ["ForwardBatch", "SeqSpec", "ModelCache", "Qwen35ForCausalLM"]
