"""`qwen35 serve`'s image and video flags: parsed into the per-request limits and the MediaPolicy, or a one-line
error naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen35.cli import build_parser
from qwen35.server.serve_args import DEFAULT_MM_LIMITS, ServeError, media_policy, mm_limits
from tests.server.test_serve_cli import HF_ID, hf_cache, plan, run_cli  # noqa: F401 - hf_cache is a fixture


def args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize("argv,limits", [
    ((), DEFAULT_MM_LIMITS),
    (("--limit-mm-per-prompt", '{"image": 4, "video": 1}'), {"image": 4, "video": 1}),
    (("--limit-mm-per-prompt", '{"image": 3}'), {"image": 3, "video": DEFAULT_MM_LIMITS["video"]}),
    (("--limit-mm-per-prompt", "image=4,video=0"), {"image": 4, "video": 0}),  # the older vLLM form
    (("--limit-mm-per-prompt", '{"video": {"count": 1, "num_frames": 32}}'),  # vLLM's per-modality object
     {"image": DEFAULT_MM_LIMITS["image"], "video": 1}),
    (("--language-model-only",), {"image": 0, "video": 0}),
    (("--limit-mm-per-prompt", '{"image": 0, "video": 0}'), {"image": 0, "video": 0}),  # text only, as vLLM
    (("--language-model-only", "--limit-mm-per-prompt", '{"image": 0, "video": 0}'), {"image": 0, "video": 0}),
    (("--limit-mm-per-prompt.image", "2"), {"image": 2, "video": DEFAULT_MM_LIMITS["video"]}),  # vLLM's dotted form
    (("--limit-mm-per-prompt", "image=4,video=3", "--limit-mm-per-prompt.video=0"), {"image": 4, "video": 0}),
])
def test_mm_limits(argv, limits):
    assert mm_limits(args(*argv)) == limits


@pytest.mark.parametrize("value,message", [
    ('{"image": -1}', "image must be a count >= 0"),
    ('{"image": true}', "image must be a count >= 0"),
    ('{"image": 1.5}', "image must be a count >= 0"),
    ('{"audio": 1}', "Qwen3.5 takes no 'audio' input"),
    ('{"video": {"num_frames": 32}}', "video needs a count"),
    ('{"video": {"count": 1, "fps": 2}}', "video needs a count"),
    ('{"image": 4', "--limit-mm-per-prompt: not valid JSON"),
    ("[4]", "expected JSON like"),
    ("image:4", "expected JSON like"),
    ("image=four", "expected JSON like"),
])
def test_bad_mm_limits(value, message):
    with pytest.raises(ServeError, match=message):
        mm_limits(args("--limit-mm-per-prompt", value))


def test_language_model_only_contradicted():
    with pytest.raises(ServeError, match="--language-model-only takes no images or videos"):
        mm_limits(args("--language-model-only", "--limit-mm-per-prompt", "image=2"))
    with pytest.raises(ServeError, match="allows 1 videos"):
        mm_limits(args("--language-model-only", "--limit-mm-per-prompt.video", "1"))
    with pytest.raises(SystemExit):
        args("--limit-mm-per-prompt.image", "-1")


def test_media_policy_defaults(monkeypatch):
    monkeypatch.delenv("VLLM_IMAGE_FETCH_TIMEOUT", raising=False)
    monkeypatch.delenv("VLLM_VIDEO_FETCH_TIMEOUT", raising=False)
    p = media_policy(args())
    assert p.allowed_local_media_path is None and not p.allow_private_urls and p.allowed_media_domains is None
    assert (p.image_timeout_s, p.video_timeout_s) == (10.0, 30.0)
    monkeypatch.setenv("VLLM_IMAGE_FETCH_TIMEOUT", "5")
    assert media_policy(args()).image_timeout_s == 5.0
    monkeypatch.setenv("VLLM_VIDEO_FETCH_TIMEOUT", "soon")
    with pytest.raises(ServeError, match=r"\$VLLM_VIDEO_FETCH_TIMEOUT: expected seconds"):
        media_policy(args())


def test_media_policy_flags(tmp_path):
    (tmp_path / "media").mkdir()
    p = media_policy(args("--allowed-local-media-path", str(tmp_path / "media" / ".." / "media"),
                          "--allow-private-media-urls", "--allowed-media-domains", "upload.wikimedia.org",
                          "Example.com,cdn.example.com", "--media-fetch-timeout", "2.5"))
    assert p.allowed_local_media_path == (tmp_path / "media").resolve()
    assert p.allow_private_urls
    assert p.allowed_media_domains == ("upload.wikimedia.org", "example.com", "cdn.example.com")
    assert (p.image_timeout_s, p.video_timeout_s) == (2.5, 2.5)


@pytest.mark.parametrize("argv,message", [
    (("--allowed-local-media-path", "/no/such/dir"), "--allowed-local-media-path /no/such/dir: no such directory"),
    (("--allowed-media-domains", "https://example.com"), "expected host names like upload.wikimedia.org"),
    (("--allowed-media-domains", ","), "expected host names"),
])
def test_bad_media_policy_flags(argv, message):
    with pytest.raises(ServeError, match=message):
        media_policy(args(*argv))


def test_allowed_local_media_path_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ServeError, match="not a directory"):
        media_policy(args("--allowed-local-media-path", str(tmp_path / "file")))


def test_the_plan_carries_limits_and_policy(hf_cache, tmp_path):
    p = plan(HF_ID, "--limit-mm-per-prompt", json.dumps({"image": 2, "video": 0}),
             "--allowed-local-media-path", str(tmp_path))
    assert p.mm_limits == {"image": 2, "video": 0}
    assert p.media_policy.allowed_local_media_path == Path(tmp_path).resolve()
    assert not any("--language-model-only" in n for n in plan(HF_ID, "--language-model-only").noops)


@pytest.mark.parametrize("line,message", [
    (f"{HF_ID} --limit-mm-per-prompt audio=1", "--limit-mm-per-prompt: Qwen3.5 takes no 'audio' input"),
    (f"{HF_ID} --allowed-local-media-path /no/such/dir", "no such directory"),
    (f"{HF_ID} --media-fetch-timeout 0", "argument --media-fetch-timeout: must be positive"),
])
def test_bad_media_flags_fail_with_one_line(hf_cache, capsys, line, message):
    rc, err = run_cli(capsys, "serve", *line.split())
    assert rc == 2
    assert err.startswith("qwen35 serve: error: ") and err.count("\n") == 1, err
    assert message in err
