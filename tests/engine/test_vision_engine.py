"""Images and video through the engine, against transformers' `Qwen3_5ForConditionalGeneration` (fp32).

The checkpoint is tiny's text model with a 2-block tower (tests/model/test_vision.py writes the same kind);
media come from the real processor on synthetic pixels. Checked: every prompt position's logits with one
image, two images of different sizes and a short video (1e-4 of the logits' scale); greedy continuations
after prefill-then-decode, with prefill chunks cutting through an image, after a prefix-cache hit, and with
MTP drafts; no false prefix hit between two images of one size; the encoder cache; the text-only mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwen35.engine import LLM, SamplingParams
from qwen35.multimodal.processor import ProcessorConfig, process_image
from qwen35.multimodal.video import process_video
from qwen35.tokenizer.chat_template import render_chat
from tests.engine.test_speculative import oracle_drafts

transformers = pytest.importorskip("transformers")

TOL = 1e-4
CFG = ProcessorConfig.from_dicts(None, None)


@pytest.fixture(scope="module")
def ckpt(vision_tiny_ckpt):
    return vision_tiny_ckpt


@pytest.fixture(scope="module")
def hf(ckpt):
    return transformers.Qwen3_5ForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()


def _image(w: int, h: int, seed: int):
    rng = np.random.default_rng(seed)
    return process_image(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), CFG)


def _video(seed: int):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (4, 64, 96, 3), dtype=np.uint8)
    return process_video(frames, np.arange(4) / 2.0, CFG)


@pytest.fixture(scope="module")
def llm(ckpt):
    return LLM(str(ckpt), dtype="float32", max_model_len=1024, max_num_seqs=4, kv_cache_memory=64 << 20)


def _chat(llm: LLM, kinds, question: str = "What is in it?") -> str:
    content = [{"type": k} for k in kinds] + [{"type": "text", "text": question}]
    return render_chat(llm.tokenizer.chat_template, [{"role": "user", "content": content}],
                       add_generation_prompt=True, enable_thinking=False)


def _run(llm: LLM, prompt: str, media, params: SamplingParams):
    return llm.generate({"prompt": prompt, "multi_modal_data": {
        kind: [m for m in media if m.kind == kind] for kind in ("image", "video")}}, params)[0]


def _engine_logits(llm: LLM, prompt: str, media) -> tuple[list[int], torch.Tensor]:
    """Every prompt position's logits, from the hidden states the engine's forward passes return."""
    hidden: list[torch.Tensor] = []
    hook = llm.engine.model.register_forward_hook(lambda m, i, out: hidden.append(out))
    try:
        out = _run(llm, prompt, media, SamplingParams(max_tokens=1))
    finally:
        hook.remove()
    ids = out.prompt_token_ids
    return ids, llm.engine.model.logits(torch.cat(hidden)[:len(ids)])


def _hf_inputs(ids: list[int], media, tok) -> dict:
    image_id, video_id = tok.token_to_id("<|image_pad|>"), tok.token_to_id("<|video_pad|>")
    t = torch.tensor([ids])
    kinds = torch.zeros_like(t, dtype=torch.int32)
    kinds[t == image_id], kinds[t == video_id] = 1, 2
    inputs = {"input_ids": t, "mm_token_type_ids": kinds}
    for kind, key, grid in (("image", "pixel_values", "image_grid_thw"),
                            ("video", "pixel_values_videos", "video_grid_thw")):
        items = [m for m in media if m.kind == kind]
        if items:
            inputs[key] = torch.cat([torch.from_numpy(m.pixels) for m in items])
            inputs[grid] = torch.tensor([m.grid_thw for m in items])
    return inputs


MEDIA = {"one-image": lambda: [_image(96, 64, 0)],
         "two-images": lambda: [_image(96, 64, 1), _image(40, 150, 2)],
         "video": lambda: [_video(3)],
         "image-and-video": lambda: [_image(64, 64, 4), _video(5)]}


@pytest.mark.parametrize("case", list(MEDIA))
def test_prompt_logits_equal_transformers(llm, hf, case):
    llm.engine.scheduler.prefix.clear()
    media = MEDIA[case]()
    ids, ours = _engine_logits(llm, _chat(llm, [m.kind for m in media]), media)
    with torch.no_grad():
        want = hf(**_hf_inputs(ids, media, llm.tokenizer)).logits[0]
    err = (ours - want).abs().max().item()
    assert err <= TOL * want.abs().max().item(), f"max |ours - transformers| = {err:.2e}"


def _greedy(llm, prompt, media, n=8):
    return _run(llm, prompt, media, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, logprobs=0))


def _same(out, want, ref=None) -> bool:
    """Token-identical to `want`; and, given a reference output, its log-probabilities too (a wrong position
    or media row shifts them long before it changes a random model's argmax)."""
    ok = out.outputs[0].token_ids == want
    if ref is not None:
        ok = ok and abs(out.outputs[0].cumulative_logprob - ref.outputs[0].cumulative_logprob) < 1e-3
    return ok


@pytest.fixture(scope="module")
def truth(llm, hf):
    """Greedy continuation of a two-image prompt, by transformers."""
    media = MEDIA["two-images"]()
    prompt = _chat(llm, ["image", "image"])
    ids = _run(llm, prompt, media, SamplingParams(max_tokens=1)).prompt_token_ids
    with torch.no_grad():
        out = hf.generate(**_hf_inputs(ids, media, llm.tokenizer), max_new_tokens=8, do_sample=False)
    want = out[0, len(ids):].tolist()
    llm.engine.scheduler.prefix.clear()
    ref = _greedy(llm, prompt, media)
    assert ref.outputs[0].token_ids == want
    return prompt, media, want, ref


def transformers_logits(llm, ids, media):
    return HF_MODEL[0](**_hf_inputs(ids, media, llm.tokenizer)).logits[0]


HF_MODEL: list = []


def test_greedy_equals_transformers_after_prefill_then_decode(llm, hf, truth):
    HF_MODEL[:] = [hf]
    prompt, media, want, ref = truth
    lp = ref.outputs[0].logprobs
    with torch.no_grad():  # the decode steps' log-probabilities against transformers' full forward
        ids = ref.prompt_token_ids + want
        logits = transformers_logits(llm, ids, media)
    want_lp = torch.log_softmax(logits[len(ref.prompt_token_ids) - 1:-1], -1)
    got = torch.tensor([lp[i][t].logprob for i, t in enumerate(want)])
    assert (got - want_lp[torch.arange(len(want)), torch.tensor(want)]).abs().max() < 1e-4


def test_chunked_prefill_through_an_image(ckpt, truth):
    prompt, media, want, ref = truth
    small = LLM(str(ckpt), dtype="float32", max_model_len=1024, max_num_seqs=4, kv_cache_memory=64 << 20,
                max_num_batched_tokens=37, enable_prefix_caching=False)
    assert _same(_greedy(small, prompt, media), want, ref)
    cache = small.engine.runner.encoder_cache
    assert (cache.misses, len(cache)) == (2, 2)  # each image encoded once, though its rows span chunks


def test_prefix_cache_hit_and_no_false_hit(llm, truth):
    prompt, media, want, ref = truth
    prefix = llm.engine.scheduler.prefix
    prefix.clear()
    assert _same(_greedy(llm, prompt, media), want, ref)
    again = _greedy(llm, prompt, media)  # same images: the prefix cache serves the prompt
    assert _same(again, want, ref) and again.num_cached_tokens > 0
    # the same prompt with other pixels of the same sizes: no cached state may cover the first image
    other = [_image(96, 64, 11), _image(40, 150, 12)]
    got = _greedy(llm, prompt, other)
    first_pad = got.prompt_token_ids.index(llm.tokenizer.token_to_id("<|image_pad|>"))
    assert got.num_cached_tokens <= first_pad
    fresh = LLM(str(llm.engine.cfg.model), dtype="float32", max_model_len=1024, kv_cache_memory=64 << 20,
                enable_prefix_caching=False)
    alone = _greedy(fresh, prompt, other)
    assert _same(got, alone.outputs[0].token_ids, alone)


def test_encoder_cache_serves_the_same_image_in_another_prompt(llm):
    image = _image(96, 64, 21)
    cache = llm.engine.runner.encoder_cache
    _greedy(llm, _chat(llm, ["image"], "Describe it."), [image], n=2)
    misses, hits = cache.misses, cache.hits
    _greedy(llm, _chat(llm, ["image"], "Something else entirely, please."), [image], n=2)
    assert (cache.misses, cache.hits) == (misses, hits + 1)


@pytest.mark.parametrize("k", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_mtp_drafts_keep_greedy_output(ckpt, truth, k):
    prompt, media, want, ref = truth
    spec = LLM(str(ckpt), dtype="float32", max_model_len=1024, max_num_seqs=4, kv_cache_memory=64 << 20,
               speculative_config={"method": "mtp", "num_speculative_tokens": k})
    assert _same(_greedy(spec, prompt, media), want, ref)  # the head's own (rejected) drafts
    oracle_drafts(spec, _Every(want))
    assert _same(_greedy(spec, prompt, media), want, ref)  # some kept, some not


class _Every(dict):
    """The same true continuation for every request id."""

    def __init__(self, want):
        super().__init__()
        self.want = want

    def get(self, key, default=None):
        return self.want


def test_language_model_only_refuses_media(ckpt):
    text_only = LLM(str(ckpt), dtype="float32", max_model_len=256, kv_cache_memory=16 << 20,
                    language_model_only=True)
    assert text_only.engine.model.visual is None
    with pytest.raises(ValueError, match="language model only"):
        _greedy(text_only, _chat(text_only, ["image"]), [_image(64, 64, 0)])
    assert text_only.generate("Hello", SamplingParams(max_tokens=2))[0].outputs[0].token_ids


def test_placeholder_and_limit_errors(llm, ckpt):
    with pytest.raises(ValueError, match="placeholder"):
        _greedy(llm, "no placeholder here", [_image(64, 64, 0)])
    limited = LLM(str(ckpt), dtype="float32", max_model_len=1024, kv_cache_memory=16 << 20,
                  limit_mm_per_prompt={"image": 1})
    with pytest.raises(ValueError, match="limit-mm-per-prompt"):
        _greedy(limited, _chat(limited, ["image", "image"]), [_image(64, 64, 0), _image(64, 64, 1)])
    assert not limited.engine.has_unfinished()


def test_moe_prompt_logits_equal_transformers(tmp_path_factory):
    from tests.model.test_vision import _write

    path = _write(tmp_path_factory, "vision_moe", "tiny-moe", 4, depth=2, hidden_size=64, num_heads=4,
                  intermediate_size=128)
    hf = transformers.Qwen3_5MoeForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    moe = LLM(str(path), dtype="float32", max_model_len=512, kv_cache_memory=32 << 20)
    media = MEDIA["image-and-video"]()
    ids, ours = _engine_logits(moe, _chat(moe, [m.kind for m in media]), media)
    with torch.no_grad():
        want = hf(**_hf_inputs(ids, media, moe.tokenizer)).logits[0]
    err = (ours - want).abs().max().item()
    assert err <= TOL * want.abs().max().item(), f"max |ours - transformers| = {err:.2e}"


def test_llm_chat_takes_image_url_parts(llm, tmp_path):
    import base64
    import io

    rng = np.random.default_rng(7)
    picture = Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "What is in it?"}]}]
    chat = llm.chat(messages, params, chat_template_kwargs={"enable_thinking": False})[0]
    direct = _run(llm, _chat(llm, ["image"]), [process_image(picture, CFG)], params)
    assert chat.prompt_token_ids == direct.prompt_token_ids
    assert chat.outputs[0].token_ids == direct.outputs[0].token_ids
    # file:// only under allowed_local_media_path (None here)
    (tmp_path / "p.png").write_bytes(buf.getvalue())
    messages[0]["content"][0]["image_url"]["url"] = f"file://{tmp_path / 'p.png'}"
    with pytest.raises(ValueError, match="allowed-local-media-path|allowed_local_media_path"):
        llm.chat(messages, params)
