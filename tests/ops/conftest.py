"""The `isa` fixture: a test of our C++ kernels runs once per instruction set this CPU supports, forced
(`native.force_isa`), so one machine checks the AVX512, AVX2 and plain C++ paths alike."""

from __future__ import annotations

import pytest

from qwen35.ops import native

ORDER = ["scalar", "avx2", "avx512_bf16"]  # each one runs wherever the next one does
ISAS = [isa for isa in reversed(ORDER)
        if native.ops() is not None and ORDER.index(isa) <= ORDER.index(native.isa())]


@pytest.fixture(params=ISAS)
def isa(request):
    native.force_isa(request.param)
    yield request.param
    native.force_isa(None)
