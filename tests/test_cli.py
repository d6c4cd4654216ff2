"""`python -m interleave demo` and `python -m interleave generate` run end to end (subprocesses)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "interleave", *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_every_prompt_kind():
    result = _run("demo", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    for kind in ("multi-image", "video", "3d", "anyres image"):
        assert f"{kind}" in result.stdout
    assert result.stdout.count("logits match transformers: True") == 4


def test_generate_with_images_and_a_frame_folder(tmp_path):
    from interleave.tiny import save_tiny_checkpoint
    model_dir = save_tiny_checkpoint(str(tmp_path / "model"), "onevision")
    Image.fromarray(skdata.astronaut()).save(tmp_path / "a.png")
    frames = tmp_path / "clip"
    frames.mkdir()
    for i, im in enumerate([skdata.chelsea(), skdata.coffee(), skdata.astronaut()]):
        Image.fromarray(im).save(frames / f"{i:03d}.jpg")
    result = _run("generate", "--model", model_dir, "--image", str(tmp_path / "a.png"), "--video", str(frames),
                  "--frames", "2", "--prompt", "What is shown?", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    missing = _run("generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert missing.returncode != 0 and "nothing is downloaded" in missing.stderr
    no_frames = tmp_path / "empty"
    no_frames.mkdir()
    bad = _run("generate", "--model", model_dir, "--video", str(no_frames), "--prompt", "x")
    assert bad.returncode != 0 and "holds no frame images" in bad.stderr


def test_profile_writes_a_trace_with_our_ranges(tmp_path):
    out = tmp_path / "trace.json"
    result = _run("profile", "--steps", "1", "--batch-size", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("interleave/train/forward", "interleave/train/backward", "interleave/merge_tokens",
                 "interleave/vision/encoder", "interleave/image_processor"):
        assert name in result.stdout, name
    assert "interleave/train/optimizer" in out.read_text()


def test_ranges_cost_nothing_without_a_profiler():
    import contextlib

    from interleave import nvtx
    assert isinstance(nvtx.range("x"), contextlib.nullcontext)


def test_op_scope_skips_autograd_and_names_the_range_under_a_profiler():
    # The context our ops run in (interleave._extension.op_scope): below the autograd layer when
    # nothing needs grad, through it otherwise; a profiler range only while a profiler runs.
    import contextlib

    import torch
    from interleave import _extension
    plain, leaf = torch.randn(2), torch.randn(2, requires_grad=True)
    below = type(torch._C._AutoDispatchBelowAutograd())
    assert isinstance(_extension.op_scope("x", plain, None), below)
    assert isinstance(_extension.op_scope("x", plain, leaf), contextlib.nullcontext)
    with torch.no_grad():
        assert isinstance(_extension.op_scope("x", leaf), below)
    with torch.profiler.profile() as prof:
        with _extension.op_scope("scoped", plain):
            torch.ones(1) + 1
    assert any(e.name == "interleave/scoped" for e in prof.events())
