"""`python -m interleave generate` and `python -m interleave demo`.

generate: a local checkpoint folder, images, a video (a file through PyAV, or a folder of frames)
and a prompt -> the model's answer (streamed). demo: the embedded default for the model path: a tiny
random OneVision-layout model built in memory runs a multi-image, a video, a 3D (scikit-image's
stereo motorcycle pair) and an anyres single-image prompt through generation, printing per-stage
timings of our path against transformers' on the same inputs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_image(path: str):
    import numpy as np
    from PIL import Image
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} does not exist")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_video(path: str, num_frames: int):
    """Uniformly sampled frames (interleave.plan.sample_frames) of a video file (PyAV) or of a folder
    of frame images (sorted by name). Only the sampled frames are converted and kept (a long video
    is not held in memory). A video with fewer frames than num_frames repeats frames, as the
    training code's linspace does, with a warning."""
    from .plan import sample_frames
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"video folder {path!r} holds no frame images ({', '.join(IMAGE_EXTENSIONS)})")
        _warn_if_short(path, len(files), num_frames)
        return [load_image(os.path.join(path, files[i])) for i in sample_frames(len(files), num_frames)]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path!r} does not exist")
    try:
        import av
    except ImportError:
        # ImportError, not SystemExit: the trainer's dataset skips such a sample with this reason
        # instead of stopping a long run (generate_main turns it into a clean exit).
        raise ImportError(f"decoding the video file {path!r} needs PyAV (pip install av); "
                          "or use a folder of frame images") from None
    try:
        # The frame count from the packets (the header's count is missing or approximate in many
        # containers), then one decoding pass that converts only the sampled frames.
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"video {path!r} has no video stream (streams: "
                                 f"{', '.join(st.type for st in container.streams) or 'none'})")
            total = sum(1 for packet in container.demux(video=0) if packet.size)
        frames, decoded = _decode_frames(av, path, sample_frames(total, num_frames) if total else [])
        if len(frames) < num_frames and decoded:  # fewer frames decoded than packets: sample those
            frames, decoded = _decode_frames(av, path, sample_frames(decoded, num_frames))
    except av.FFmpegError as e:
        raise ValueError(f"video {path!r} could not be decoded: {e}") from None
    if not decoded:
        raise ValueError(f"video {path!r} has no frames")
    _warn_if_short(path, decoded, num_frames)
    return frames


def _decode_frames(av, path: str, indices: list):
    """The frames at `indices` (sorted, repeats allowed) as RGB arrays, and how many frames the file decodes to."""
    frames, decoded = [], 0
    with av.open(path) as container:
        for frame in container.decode(video=0):
            while len(frames) < len(indices) and indices[len(frames)] == decoded:
                frames.append(frame.to_ndarray(format="rgb24"))
            decoded += 1
    return frames, decoded


def _warn_if_short(path: str, total: int, num_frames: int) -> None:
    if total < num_frames:
        import warnings
        warnings.warn(f"video {path!r} has {total} frame(s), fewer than the {num_frames} asked for: "
                      "frames repeat (interleave.plan.sample_frames)", stacklevel=3)


def generate_main(argv) -> int:
    import torch

    from . import InterleaveModel, Video, generate
    from .processing import DEFAULT_SYSTEM

    p = argparse.ArgumentParser(prog="python -m interleave generate", description="Answer a prompt about images/video.")
    p.add_argument("--model", required=True, help="local checkpoint folder (transformers layout)")
    p.add_argument("--image", action="append", default=[], help="an image file (repeat for several)")
    p.add_argument("--video", default=None, help="a video file (PyAV) or a folder of frames")
    p.add_argument("--frames", type=int, default=16, help="frames sampled from the video (default 16)")
    p.add_argument("--prompt", required=True, help="the question; <image>/<video> mark where inputs go "
                                                   "(default: all inputs in front)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeat for several); "
                   "the tokenizer's end of turn always stops")
    p.add_argument("--system", default=DEFAULT_SYSTEM, help=f"the system prompt (default {DEFAULT_SYSTEM!r}; '' for none)")
    p.add_argument("--image-format", choices=["interleaved", "front"], default="interleaved",
                   help="placeholders where the prompt puts them, or all at the front of the turn")
    p.add_argument("--static-cache", action="store_true", help="transformers' static KV cache (for CUDA graphs)")
    p.add_argument("--seed", type=int, default=None, help="seed for --sample")
    args = p.parse_args(argv)

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else None)
    try:  # bad input files: one line naming the problem, not a traceback
        visuals = [load_image(path) for path in args.image]
        frames = load_video(args.video, args.frames) if args.video else None
    except (OSError, ValueError, ImportError) as e:
        raise SystemExit(f"generate: {e}") from None
    model = InterleaveModel.from_pretrained(args.model, dtype=dtype, device=args.device)
    holders = "<image>" * len(visuals)
    if frames is not None:
        visuals.append(Video(frames))
        holders += "<video>" if model.kind == "onevision" else "<image>" * len(frames)
    prompt = args.prompt if ("<image>" in args.prompt or "<video>" in args.prompt) else holders + args.prompt
    for piece in generate(model, prompt, visuals, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                          temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, stop=args.stop,
                          static_cache=args.static_cache, system=args.system or None,
                          image_format=args.image_format, seed=args.seed, stream=True):
        print(piece, end="", flush=True)
    print()
    return 0


def _median_ms(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def demo_main(argv) -> int:
    import torch
    from skimage import data

    from . import InterleaveModel, Video, generate, hf, transformers_compat
    from .tiny import tiny_model, tiny_tokenizer

    p = argparse.ArgumentParser(prog="python -m interleave demo", description=__doc__.split("\n")[0])
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--tile", type=int, default=56, help="tile size of the tiny model (multiple of 14)")
    args = p.parse_args(argv)

    print(f"building a tiny random OneVision-layout model (SigLIP 32 wide, {args.tile}px tiles, Qwen2 48 wide)")
    hf_model = tiny_model("onevision", tile=args.tile)
    try:  # the reference processor: transformers' PIL image processor with the model's settings
        ref_processor = transformers_compat.pil_image_processor_class("onevision")(
            size={"height": args.tile, "width": args.tile}, image_grid_pinpoints=hf_model.config.image_grid_pinpoints,
            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    except ImportError:
        ref_processor = None
    model = InterleaveModel.from_transformers(
        hf_model, tiny_tokenizer(), hf.ImageProcessor.from_hf(ref_processor) if ref_processor else None)
    left, right, _ = data.stereo_motorcycle()
    astronaut, cat, coffee = data.astronaut(), data.chelsea(), data.coffee()
    prompts = {
        "multi-image": ("<image><image>What differs between these two pictures?", [astronaut, cat]),
        "video": ("<video>What happens in this clip?", [Video([astronaut, cat, coffee, cat, astronaut, coffee])]),
        "3d": ("<image><image>How far away is the motorcycle?", [left, right]),
        "anyres image": ("<image>Describe the image in detail.", [coffee]),
    }
    header = f"{'prompt':14s} {'stage':26s} {'ours ms':>9s} {'reference ms':>13s} {'ratio':>7s}"
    print(header)
    print("-" * len(header))
    for name, (prompt, visuals) in prompts.items():
        batch = model.prepare([prompt], [visuals])
        pixels = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        inner = model.hf.model
        ids = batch["input_ids"]

        def ours_visual():
            return hf.visual_tokens(model.hf, pixels.get("pixel_values"), pixels.get("image_sizes"),
                                    pixels.get("pixel_values_videos"), pixels.get("batch_num_images"))

        def ref_visual():
            out = []
            if "pixel_values" in pixels:
                out.append(transformers_compat.image_features(inner, pixels["pixel_values"], pixels["image_sizes"],
                                                              pixels.get("batch_num_images")))
            if "pixel_values_videos" in pixels:
                out.append(transformers_compat.video_features(inner, pixels["pixel_values_videos"]))
            return out

        def ours_prefill():
            return model(**batch).logits

        def ref_prefill():
            hf.unpatch(model.hf)
            try:
                return model.hf(**batch).logits
            finally:
                hf.patch(model.hf)

        images = [v for v in visuals if not isinstance(v, Video)]
        with torch.no_grad():
            stages = []
            if images and ref_processor is not None:
                stages.append(("image processor", lambda: model.image_processor([images]),
                               lambda: ref_processor([images], return_tensors="pt")))
            stages += [("visual path (vision+pack)", ours_visual, ref_visual),
                      ("prefill (visual+merge+LM)", ours_prefill, ref_prefill)]
            for stage, ours_fn, ref_fn in stages:
                a, b = _median_ms(ours_fn), _median_ms(ref_fn)
                print(f"{name:14s} {stage:26s} {a:9.2f} {b:13.2f} {b / a:6.2f}x")
            same = torch.allclose(ours_prefill(), ref_prefill(), atol=1e-5, rtol=1e-5)
        text = generate(model, prompt, visuals, max_new_tokens=args.max_new_tokens)
        print(f"{name:14s} {ids.shape[1]} prompt tokens, logits match transformers: {same}; "
              f"generated (random weights): {text!r}")
    return 0


def _demo_dataset(root: str) -> str:
    """A small M4-format dataset from scikit-image's photos (multi-image, 3D pair, a 3-frame video
    folder, a single image, text-only) under `root`; returns the JSON path."""
    import json

    from PIL import Image
    from skimage import data

    os.makedirs(os.path.join(root, "clip"), exist_ok=True)
    left, right, _ = data.stereo_motorcycle()
    photos = {"astronaut": data.astronaut(), "cat": data.chelsea(), "coffee": data.coffee(), "left": left, "right": right}
    for name, im in photos.items():
        Image.fromarray(im).save(os.path.join(root, f"{name}.png"))
    for i, name in enumerate(("astronaut", "cat", "coffee")):
        Image.fromarray(photos[name]).save(os.path.join(root, "clip", f"{i:02d}.png"))

    def conv(q, a):
        return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    samples = [{"id": "multi", "image": ["astronaut.png", "cat.png"], "conversations": conv("<image><image>Which is a cat?", "The second.")},
               {"id": "3d", "image": ["left.png", "right.png"], "conversations": conv("<image><image>What vehicle?", "A motorcycle.")},
               {"id": "video", "video": "clip", "conversations": conv("<image>What is in the clip?", "A person, a cat, coffee.")},
               {"id": "single", "image": "coffee.png", "conversations": conv("<image>What drink?", "Coffee.")},
               {"id": "text", "conversations": conv("Say hi.", "Hi!")}]
    path = os.path.join(root, "data.json")
    with open(path, "w") as f:
        json.dump(samples, f)
    return path


def profile_main(argv) -> int:
    """A few training steps under the PyTorch profiler -> a Chrome trace and a summary table of the
    interleave/* ranges (ops, visual-path stages, training-step stages) and the busiest ops."""
    import tempfile

    import torch

    from .tiny import save_tiny_checkpoint
    from .train import TrainConfig, train

    p = argparse.ArgumentParser(prog="python -m interleave profile", description=profile_main.__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint folder (default: a tiny random model)")
    p.add_argument("--data", default=None, help="JSON/JSONL data (default: a small dataset of scikit-image photos)")
    p.add_argument("--image-root", default="")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default="interleave-trace.json", help="Chrome trace (chrome://tracing, Perfetto)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or save_tiny_checkpoint(os.path.join(tmp, "model"), "onevision")
        data_path, root = args.data, args.image_root
        if data_path is None:
            root = os.path.join(tmp, "images")
            data_path = _demo_dataset(root)
        cfg = TrainConfig(model=model, data=[data_path], image_root=root, out=os.path.join(tmp, "out"), steps=args.steps,
                          batch_size=args.batch_size, progress=False)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities, record_shapes=False) as prof:
            train(cfg)
        prof.export_chrome_trace(args.out)
    events = prof.key_averages()
    ours = sorted((e for e in events if e.key.startswith("interleave/")), key=lambda e: -e.cpu_time_total)
    print(f"{'range':34s} {'calls':>6s} {'CPU total ms':>13s}")
    for e in ours:
        print(f"{e.key:34s} {e.count:6d} {e.cpu_time_total / 1e3:13.2f}")
    print()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"wrote {args.out}")
    return 0
