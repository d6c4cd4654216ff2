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


def _write_video(path, frames, codec="mpeg4"):
    """A small video file written with PyAV (the tests make their own: nothing is downloaded)."""
    import av
    import numpy as np
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=5)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for im in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(im), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_generate_with_images_and_a_video_file(tmp_path):
    """A video file through PyAV when it is installed (the test extra has it), else a folder of frames."""
    from interleave.tiny import save_tiny_checkpoint
    model_dir = save_tiny_checkpoint(str(tmp_path / "model"), "onevision")
    Image.fromarray(skdata.astronaut()).save(tmp_path / "a.png")
    crops = [im[:240, :320] for im in (skdata.chelsea(), skdata.coffee(), skdata.astronaut())]
    try:
        _write_video(tmp_path / "clip.mp4", crops)
        video = tmp_path / "clip.mp4"
    except ImportError:
        video = tmp_path / "clip"
        video.mkdir()
        for i, im in enumerate(crops):
            Image.fromarray(im).save(video / f"{i:03d}.png")
    result = _run("generate", "--model", model_dir, "--image", str(tmp_path / "a.png"), "--video", str(video),
                  "--frames", "2", "--prompt", "What is shown?", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    missing = _run("generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert missing.returncode != 0 and "nothing is downloaded" in missing.stderr
    no_frames = tmp_path / "empty"
    no_frames.mkdir()
    bad = _run("generate", "--model", model_dir, "--video", str(no_frames), "--prompt", "x")
    assert bad.returncode != 0 and "holds no frame images" in bad.stderr


def test_load_video_samples_a_file_and_a_folder(tmp_path):
    import numpy as np

    from interleave.cli import load_video
    frames = [np.full((48, 64, 3), 30 * i, np.uint8) for i in range(7)]  # flat frames: codec-safe levels
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, im in enumerate(frames):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    got = load_video(str(folder), 3)  # linspace(0, 6, 3) -> frames 0, 3, 6, lossless
    assert [int(f[0, 0, 0]) for f in got] == [0, 90, 180] and got[0].shape == (48, 64, 3)
    with pytest.warns(UserWarning, match="has 7 frame\\(s\\), fewer than the 10 asked for"):
        assert len(load_video(str(folder), 10)) == 10
    av = pytest.importorskip("av")
    _write_video(tmp_path / "clip.mp4", frames)
    got = load_video(str(tmp_path / "clip.mp4"), 3)
    assert [f.shape for f in got] == [(48, 64, 3)] * 3
    assert [abs(int(f.mean()) - level) <= 2 for f, level in zip(got, (0, 90, 180))] == [True] * 3, \
        [float(f.mean()) for f in got]
    with pytest.warns(UserWarning, match="has 7 frame"):
        assert len(load_video(str(tmp_path / "clip.mp4"), 9)) == 9
    # a file without a video stream, and one that is no media file at all: errors naming the file
    with av.open(str(tmp_path / "sound.wav"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        chunk.sample_rate = 8000
        for packet in [*stream.encode(chunk), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(ValueError, match="sound.wav' has no video stream \\(streams: audio\\)"):
        load_video(str(tmp_path / "sound.wav"), 3)
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 50)
    with pytest.raises(ValueError, match="junk.mp4' could not be decoded"):
        load_video(str(tmp_path / "junk.mp4"), 3)


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


def test_generate_options_reach_generation(tmp_path, capsys):
    """--stop, --system, --image-format, --static-cache: the CLI prints what interleave.generate
    returns with the same options (in-process: the subprocess test above covers the entry point)."""
    from interleave import InterleaveModel, cli, generate
    from interleave.tiny import save_tiny_checkpoint
    model_dir = save_tiny_checkpoint(str(tmp_path / "model"), "onevision")
    Image.fromarray(skdata.astronaut()[::2, ::2]).save(tmp_path / "a.png")
    model = InterleaveModel.from_pretrained(model_dir, device="cpu")
    image = cli.load_image(str(tmp_path / "a.png"))
    # Seeded sampling: the tiny random model's greedy answer is one repeated byte.
    options = dict(max_new_tokens=8, system=None, image_format="front", do_sample=True, top_k=50, seed=3)
    full = generate(model, "Describe <image> briefly.", [image], **options)
    stop = next(c for c in full[1:] if c.isascii() and c.isprintable())  # a character after the first
    expected = generate(model, "Describe <image> briefly.", [image], stop=[stop], static_cache=True, **options)
    assert expected == full[:full.find(stop)] and len(expected) < len(full)
    capsys.readouterr()
    assert cli.generate_main(["--model", model_dir, "--device", "cpu", "--image", str(tmp_path / "a.png"),
                              "--prompt", "Describe <image> briefly.", "--max-new-tokens", "8", "--stop", stop,
                              "--system", "", "--image-format", "front", "--static-cache", "--sample",
                              "--top-k", "50", "--seed", "3"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    with pytest.raises(SystemExit, match=r"generate: image '.*missing.png' does not exist"):
        cli.generate_main(["--model", model_dir, "--image", str(tmp_path / "missing.png"), "--prompt", "x"])
