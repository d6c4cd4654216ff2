"""The trainer and its data (issue 7), on CPU: a tiny random model and a small M4-format dataset
made here from real images that packages ship (multi-image, a video as a frame folder, a stereo pair
as 3D, a single image, text-only, and three bad samples)."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")

import interleave  # noqa: E402
from interleave import data as datamod  # noqa: E402
from interleave.tiny import save_tiny_checkpoint  # noqa: E402
from interleave.train import TrainConfig, cosine_with_warmup, train  # noqa: E402

# The dataset's 3-frame clip under the trainer's default 10 frames: load_video warns that frames
# repeat (tested in test_cli.py) on every load, 69 times a run.
pytestmark = pytest.mark.filterwarnings("ignore:video .* fewer than the .* asked for:UserWarning")

GOOD = ["multi", "video", "3d", "single", "text"]
BAD = {"missing": "missing image", "mismatch": "2 <image> placeholders but 1 images", "broken": "undecodable image"}


def _conv(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    img = root / "img"
    (img / "clip").mkdir(parents=True)
    left, right, _ = skdata.stereo_motorcycle()
    for name, im in {"astronaut": skdata.astronaut(), "cat": skdata.chelsea(), "coffee": skdata.coffee(),
                     "left": left, "right": right}.items():
        Image.fromarray(im).save(img / f"{name}.png")
    for i, im in enumerate([skdata.astronaut(), skdata.chelsea(), skdata.coffee()]):
        Image.fromarray(im).save(img / "clip" / f"{i:02d}.png")
    (img / "broken.png").write_bytes(b"not a png")
    samples = [
        {"id": "multi", "image": ["astronaut.png", "cat.png"], "conversations": _conv("<image><image>Which is a cat?", "The second.")},
        {"id": "video", "video": "clip", "conversations": _conv("<image>What is in the clip?", "A person, a cat, coffee.")},
        {"id": "3d", "image": ["left.png", "right.png"], "conversations": _conv("<image><image>What vehicle?", "A motorcycle.")},
        {"id": "single", "image": "coffee.png", "conversations": _conv("<image>\nWhat drink?", "Coffee.") + _conv("Hot?", "Yes.")},
        {"id": "text", "conversations": _conv("Say hi.", "Hi!")},
        {"id": "missing", "image": "nope.png", "conversations": _conv("<image>x", "y")},
        {"id": "mismatch", "image": ["cat.png"], "conversations": _conv("<image><image>x", "y")},
        {"id": "broken", "image": "broken.png", "conversations": _conv("<image>x", "y")},
    ]
    (root / "m4.json").write_text(json.dumps(samples))
    (root / "good.jsonl").write_text("\n".join(json.dumps(s) for s in samples[:5]))
    save_tiny_checkpoint(str(root / "model"), "llava")
    return root


def _cfg(workdir, name, **kw):
    base = dict(model=str(workdir / "model"), data=[str(workdir / "good.jsonl")], image_root=str(workdir / "img"),
                out=str(workdir / name), steps=4, batch_size=2, lr=1e-3, warmup_ratio=0.25, progress=False)
    return TrainConfig(**{**base, **kw})


def test_dataset_builds_every_kind_and_skips_bad_samples(workdir):
    model = interleave.InterleaveModel.from_pretrained(str(workdir / "model"))
    ds = datamod.ConversationDataset([datamod.Source(str(workdir / "m4.json"), str(workdir / "img"))], model,
                                     image_format="mixed", front_ratio=0.5, num_frames=2)
    items = {ds.index[i][1]: ds[i] for i in range(len(ds))}
    for j, name in enumerate(GOOD):
        s = items[j]
        assert "skip" not in s, s
        n_images = {"multi": 2, "video": 2, "3d": 2, "single": 1, "text": 0}[name]
        assert len(s["visuals"]) == n_images
        assert s["input_ids"].count(model.image_token_id) == n_images * 4  # 2x2 features per 28px tile
        learned = [t for t, lab in zip(s["input_ids"], s["labels"]) if lab != -100]
        assert model.tokenizer.decode(learned).endswith("<|im_end|>\n")
        assert all(lab == -100 for t, lab in zip(s["input_ids"], s["labels"]) if t == model.image_token_id)
    for j, (name, reason) in enumerate(BAD.items(), start=len(GOOD)):
        assert reason in items[j]["skip"] and items[j]["skip"].startswith(name)
    batch = datamod.collate([items[0], items[5], items[3]], pad_id=257)
    assert batch["skipped"] == 1 and batch["input_ids"].shape[0] == 2 and len(batch["visuals"]) == 2


def test_truncation_never_cuts_a_visual_block():
    ids = [1, 2] + [9] * 4 + [3, 4] + [9] * 4 + [5, 6]
    labels = [-100] * 6 + [3, 4] + [-100] * 4 + [5, 6]
    assert datamod.truncate(ids, labels, 100, {9}) == len(ids)
    assert datamod.truncate(ids, labels, 10, {9}) == 8       # inside the second block: cut before it
    assert datamod.truncate(ids, labels, 8, {9}) == 8
    assert datamod.truncate(ids, labels, 4, {9}) is None     # nothing learnable before the first block


def test_mixture_weights():
    idx = datamod.mixture_indices([10, 4], [0.5, 2.0], seed=1)
    assert sum(1 for s, _ in idx if s == 0) == 5 and sum(1 for s, _ in idx if s == 1) == 8
    assert sorted(i for s, i in idx if s == 1) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_schedule():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0)


def test_overfits(workdir):
    result = train(_cfg(workdir, "overfit", steps=40, batch_size=5, lr=3e-3, warmup_ratio=0.05))
    losses = result["losses"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert interleave.InterleaveModel.from_pretrained(result["checkpoint"])  # a transformers checkpoint


def test_ours_and_reference_path_train_alike(workdir):
    ours = train(_cfg(workdir, "ours", steps=4))["losses"]
    ref = train(_cfg(workdir, "ref", steps=4, reference=True))["losses"]
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(ref), rtol=1e-5, atol=1e-5)


def test_resume_equals_uninterrupted(workdir):
    full = train(_cfg(workdir, "full", steps=6, save_every=3))
    resumed = train(_cfg(workdir, "resumed", steps=6, resume=str(workdir / "full" / "step-3")))
    assert resumed["losses"] == full["losses"][3:]
    a = interleave.InterleaveModel.from_pretrained(str(workdir / "full" / "step-6")).hf.state_dict()
    b = interleave.InterleaveModel.from_pretrained(str(workdir / "resumed" / "step-6")).hf.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_samples_are_skipped_and_counted(workdir):
    result = train(_cfg(workdir, "bad", data=[str(workdir / "m4.json")], steps=2, batch_size=4))
    assert result["skipped"] == 3 and len(result["losses"]) == 2  # 8 samples seen once, 3 of them bad
    assert all(any(r.startswith(name) for r in result["skip_reasons"]) for name in BAD)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_equal_one(workdir, fsdp):
    """torchrun --nproc_per_node 2 (gloo; DDP or FSDP2) with batch 2 per process equals one process
    with batch 4, and resumes from its own checkpoint bit for bit. The data includes bad samples,
    so a rank can get a micro-batch with nothing left."""
    script = workdir / "dist_run.py"
    script.write_text(
        "import json, os, sys, torch\n"
        "from interleave.train import TrainConfig, exit_worker, train\n"
        "cfg = TrainConfig(**json.loads(sys.argv[1]))\n"
        "res = train(cfg)\n"
        "if int(os.environ.get('RANK', '0')) == 0:\n"
        "    with open(sys.argv[2], 'w') as f:\n"
        "        json.dump(res['losses'], f)\n"
        "exit_worker(0)\n")  # as `python -m interleave train` ends under torchrun
    common = dict(model=str(workdir / "model"), data=[str(workdir / "m4.json")], image_root=str(workdir / "img"),
                  steps=5, lr=1e-3, warmup_ratio=0.2, progress=False, tune="projector,llm")
    name = "fsdp" if fsdp else "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(out, result, **kw):
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                              "29534" if fsdp else "29533", str(script),
                              json.dumps({**common, "batch_size": 2, "fsdp": fsdp, "out": str(out), **kw}),
                              str(result)], capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(result.read_text())

    losses_two = torchrun(workdir / f"two-{name}", workdir / f"two-{name}.json", save_every=3)
    # Resuming the 2-process run from its step-3 checkpoint continues it bit for bit (FSDP: the
    # checkpoint holds the gathered optimizer state, each rank takes its shards back).
    resumed = torchrun(workdir / f"two-{name}-resumed", workdir / f"two-{name}-resumed.json",
                       resume=str(workdir / f"two-{name}" / "step-3"))
    assert resumed == losses_two[3:]
    a = interleave.InterleaveModel.from_pretrained(str(workdir / f"two-{name}" / "step-5")).hf.state_dict()
    b = interleave.InterleaveModel.from_pretrained(str(workdir / f"two-{name}-resumed" / "step-5")).hf.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    one = train(TrainConfig(**{**common, "batch_size": 4, "out": str(workdir / f"one-{name}")}))
    assert one["skipped"] > 0
    torch.testing.assert_close(torch.tensor(losses_two), torch.tensor(one["losses"]), rtol=1e-6, atol=0)
    a = interleave.InterleaveModel.from_pretrained(str(workdir / f"one-{name}" / "step-5")).hf.state_dict()
    b = interleave.InterleaveModel.from_pretrained(str(workdir / f"two-{name}" / "step-5")).hf.state_dict()
    for k in a:  # Adam divides by sqrt(v): rounding-level gradient differences move weights by ~1e-6
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_exit_worker_flushes_and_keeps_the_exit_code(tmp_path):
    """exit_worker leaves without the interpreter's teardown (os._exit) but loses no buffered output:
    stdout redirected to a file is block-buffered, so an unflushed line would be missing."""
    run = subprocess.run([sys.executable, "-c",
                          "import sys\nfrom interleave.train import exit_worker\n"
                          "print('buffered line')\nprint('to stderr', end='', file=sys.stderr)\n"
                          "import atexit\natexit.register(print, 'atexit ran')\nexit_worker(3)\n"],
                         stdout=open(tmp_path / "out.txt", "w"), stderr=subprocess.PIPE, text=True, timeout=120)
    assert run.returncode == 3
    assert (tmp_path / "out.txt").read_text() == "buffered line\n"  # atexit handlers are skipped
    assert run.stderr.endswith("to stderr")


@pytest.mark.parametrize("world", ["1", "2"])
def test_cli_train_ends_torchrun_workers_through_exit_worker(workdir, monkeypatch, world):
    """`python -m interleave train` under torchrun (WORLD_SIZE > 1) leaves through exit_worker after
    train() returns; a single process returns normally."""
    import interleave.train as trainmod
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "1")

    def fake_train(cfg):
        seen["cfg"] = cfg
        return {"losses": [1.0], "skipped": 0, "truncated": 0, "checkpoint": None}
    monkeypatch.setattr(trainmod, "train", fake_train)

    def fake_exit(code=0):
        raise SystemExit(f"exit_worker({code})")
    monkeypatch.setattr(trainmod, "exit_worker", fake_exit)
    argv = ["--model", str(workdir / "model"), "--data", str(workdir / "good.jsonl"), "--out", str(workdir / "cli")]
    if world == "1":
        assert trainmod.main(argv) == 0
    else:
        with pytest.raises(SystemExit, match=r"exit_worker\(0\)"):
            trainmod.main(argv)
    assert seen["cfg"].model == str(workdir / "model")


def test_first_fit_and_packed_mask():
    assert datamod.first_fit([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]
    samples = [{"input_ids": [1, 2, 3], "labels": [5, 6, 7], "visuals": [], "truncated": False, "visual_tokens": 0},
               {"input_ids": [4, 5], "labels": [8, 9], "visuals": [], "truncated": False, "visual_tokens": 0}]
    b = datamod.collate_packed(samples, max_len=8, pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]] and b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    m = b["attention_mask"][0, 0]
    assert m[4].tolist() == [False, False, False, True, True] and m[2].tolist() == [True, True, True, False, False]


def test_varlen_packing_layout():
    """varlen: one unpadded row, positions restarting per sample, cu_seqlens at the boundaries, no mask."""
    samples = [{"input_ids": [1, 2, 3], "labels": [5, 6, 7], "visuals": ["a"], "truncated": False, "visual_tokens": 0},
               {"input_ids": [4, 5], "labels": [8, 9], "visuals": [], "truncated": False, "visual_tokens": 0},
               {"skip": "missing image"}]
    b = datamod.collate_packed(samples, max_len=3, pad_id=0, varlen=True)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]] and b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert b["labels"].tolist() == [[-100, 6, 7, -100, 9]] and b["attention_mask"] is None
    assert b["cu_seqlens"].tolist() == [0, 3, 5] and b["visuals"] == [["a"], []] and b["skipped"] == 1
    with pytest.raises(ValueError, match="longer than max_len=2"):
        datamod.collate_packed(samples, max_len=2, varlen=True)


def test_packed_training_equals_padded(workdir):
    """--pack: each sample keeps its positions and attends only to itself, so the losses (and the
    weights after the steps) are the padded batch's, within rounding."""
    padded = train(_cfg(workdir, "padded", steps=3, batch_size=5, max_len=512))
    packed = train(_cfg(workdir, "packed", steps=3, batch_size=5, max_len=512, pack=True))
    torch.testing.assert_close(torch.tensor(packed["losses"]), torch.tensor(padded["losses"]), rtol=1e-5, atol=1e-6)
    a = interleave.InterleaveModel.from_pretrained(str(workdir / "padded" / "step-3")).hf.state_dict()
    b = interleave.InterleaveModel.from_pretrained(str(workdir / "packed" / "step-3")).hf.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_varlen_packed_training_equals_padded(workdir, monkeypatch):
    """The varlen layout (one unpadded row, no mask; what flash-attn's varlen kernels and FlexAttention
    get) through transformers' own boundary detection from restarting position_ids, run here with
    SDPA (FlexAttention has no CPU backward; flash-attn needs CUDA): the padded batch's losses."""
    import interleave.train as trainer
    monkeypatch.setattr(trainer, "uses_varlen_attention", lambda hf_model: True)
    padded = train(_cfg(workdir, "padded-v", steps=3, batch_size=5, max_len=512))
    varlen = train(_cfg(workdir, "varlen", steps=3, batch_size=5, max_len=512, pack=True))
    torch.testing.assert_close(torch.tensor(varlen["losses"]), torch.tensor(padded["losses"]), rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("attn", ["flex_attention", "flash_attention_2"])
def test_cuda_varlen_packed_training_equals_padded(workdir, attn):
    """On the GPU, the real varlen backends: FlexAttention (a block mask from the restarting
    positions) and flash-attn's varlen kernels (cu_seqlens) when flash-attn is installed."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if attn == "flash_attention_2":
        pytest.importorskip("flash_attn")
    # FlexAttention's Triton kernels need heads at least 16 wide (the tiny LLM's are 12): a model
    # whose LLM heads are 16 wide (the H100 run of 2026-11-27 failed in Inductor's lowering).
    model = workdir / "model-head16"
    if not model.exists():
        save_tiny_checkpoint(str(model), "llava", text_head_dim=16)
    common = dict(steps=3, batch_size=5, max_len=512, device="cuda", bf16=attn == "flash_attention_2", model=str(model))
    padded = train(_cfg(workdir, f"padded-{attn}", **common))
    varlen = train(_cfg(workdir, f"varlen-{attn}", pack=True, attn_implementation=attn, **common))
    tol = 2e-2 if common["bf16"] else 1e-4  # flash-attn runs in bf16 only
    torch.testing.assert_close(torch.tensor(varlen["losses"]), torch.tensor(padded["losses"]), rtol=tol, atol=tol)


def test_flex_attention_head_width_is_checked_before_training():
    """FlexAttention's CUDA kernels need heads >= 16 wide: a clear error up front, naming the width."""
    from interleave.tiny import tiny_model
    from interleave.train import _check_flex_head_widths
    with pytest.raises(ValueError, match="12-wide heads"):
        _check_flex_head_widths(tiny_model("llava"))
    _check_flex_head_widths(tiny_model("llava", text_head_dim=16))  # 16-wide LLM heads, 16-wide tower heads


def test_video_file_that_cannot_be_decoded_is_skipped(workdir):
    """A video file needs PyAV; without it (or with a corrupt file) the sample is skipped with its
    reason and the run goes on (load_video raises ImportError/a decoder error, not SystemExit)."""
    (workdir / "img" / "clip.mp4").write_bytes(b"not a video")
    samples = [{"id": "file", "video": "clip.mp4", "conversations": _conv("<image>What happens?", "Nothing.")},
               {"id": "text", "conversations": _conv("Say hi.", "Hi!")}]
    (workdir / "video_file.json").write_text(json.dumps(samples))
    result = train(_cfg(workdir, "video-file", data=[str(workdir / "video_file.json")], steps=1, batch_size=2))
    assert result["skipped"] == 1 and len(result["losses"]) == 1
    assert any("clip.mp4" in r for r in result["skip_reasons"]), result["skip_reasons"]


def test_tiling_in_dataloader_workers_trains_alike(workdir):
    """--tile-in-workers: decoding and tiling in a DataLoader worker process (CPU), pixels handed
    to the main process; the same losses as tiling in the main process."""
    from interleave.train import _CollateWithPixels
    model = interleave.InterleaveModel.from_pretrained(str(workdir / "model"))
    ds = datamod.ConversationDataset([datamod.Source(str(workdir / "good.jsonl"), str(workdir / "img"))], model)
    batch = _CollateWithPixels(datamod.collate, model.pixel_maker())([ds[i] for i in range(len(ds))])
    expect = model.visual_inputs(batch["visuals"])[0]
    assert batch["pixels"].keys() == expect.keys() and torch.equal(batch["pixels"]["pixel_values"], expect["pixel_values"])
    main = train(_cfg(workdir, "tile-main", steps=2, batch_size=5))
    workers = train(_cfg(workdir, "tile-workers", steps=2, batch_size=5, tile_in_workers=True, num_workers=1))
    assert workers["losses"] == main["losses"]


def test_activation_checkpointing_trains_alike(workdir):
    """--activation-checkpointing recomputes the layers in backward: the same losses."""
    plain = train(_cfg(workdir, "ckpt-off", steps=2, batch_size=5, tune="projector,llm,vision"))
    ckpt = train(_cfg(workdir, "ckpt-on", steps=2, batch_size=5, tune="projector,llm,vision",
                      activation_checkpointing=True))
    torch.testing.assert_close(torch.tensor(ckpt["losses"]), torch.tensor(plain["losses"]), rtol=1e-6, atol=0)
