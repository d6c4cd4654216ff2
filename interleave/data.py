"""Training data: M4-Instruct / LLaVA conversations -> token ids, labels and decoded visual inputs.

    data = ConversationDataset([Source("m4.json", image_root="images/")], model, max_len=4096,
                               image_format="mixed", front_ratio=0.5)
    loader = DataLoader(data, batch_size=4, collate_fn=collate, num_workers=2)

A sample (JSON list or JSONL, REFERENCE.md section 9): {"id", "image": path or [paths], "video":
file or frame folder, "conversations": [{"from": "human"|"gpt", "value": "... <image> ..."}]}.
Each sample becomes ChatML ids with labels on the assistant turns only (interleave.processing),
its placeholders expanded to each input's token count (the model's plans: the same the visual
path packs), in the `interleaved` or `front` format, or `mixed` (front with probability
front_ratio, per sample, seeded: the paper's Technique 2). Video: frames sampled uniformly
(10 by default); 3D views are images. Images are decoded in the DataLoader workers and stay uint8;
tiling happens in the main process (InterleaveModel.visual_inputs, on the model's device).

Nothing crashes a long run: a sample with a missing or undecodable file, or a placeholder count
that does not match its images, is skipped with its reason; a sample longer than max_len is cut at
a visual-block boundary (never inside a block) or skipped when nothing learnable would remain. The
dataset returns skipped samples as {"skip": reason} so that counts survive worker processes;
`collate` drops them and counts them in the batch (`batch["skipped"]`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Optional, Sequence

import torch

from . import processing

IGNORE_INDEX = -100
FORMATS = ("interleaved", "front", "mixed")


@dataclasses.dataclass(frozen=True)
class Source:
    """One data file and where its relative paths point; weight: its share in a mixture."""
    path: str
    image_root: str = ""
    weight: float = 1.0


def read_samples(path: str) -> list[dict]:
    """A JSON list or JSONL file of samples."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        samples = json.loads(text)
    else:
        samples = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise ValueError(f"data file {path!r} must hold a JSON list of objects or one object per line")
    return samples


def mixture_indices(sizes: Sequence[int], weights: Sequence[float], seed: int = 0) -> list[tuple[int, int]]:
    """(source, index) pairs of one epoch of a weighted mixture: source s contributes
    round(weight_s * size_s) samples (weight 1: each once; 0.5: a random half; 2: twice), shuffled
    together with a seeded RNG (the paper's Technique 3: balancing multi-source data)."""
    rng = random.Random(seed)
    out = []
    for s, (n, w) in enumerate(zip(sizes, weights)):
        if w < 0:
            raise ValueError(f"mixture weight of source {s} must be >= 0, got {w}")
        count = int(round(w * n))
        whole, rest = divmod(count, n) if n else (0, 0)
        picks = list(range(n)) * whole + rng.sample(range(n), rest)
        out += [(s, i) for i in picks]
    rng.shuffle(out)
    return out


def _load_image(path: str):
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _load_frames(path: str, num_frames: int):
    from .cli import load_video  # a video file (PyAV) or a folder of frames, sampled uniformly
    return load_video(path, num_frames)


def truncate(ids: list[int], labels: list[int], max_len: int, visual_ids: set) -> Optional[int]:
    """Where to cut a too-long sample: the largest length <= max_len that does not fall inside a
    visual block (a run of visual token ids). None when nothing learnable remains before it."""
    if len(ids) <= max_len:
        return len(ids)
    cut = max_len
    while cut > 0 and ids[cut - 1] in visual_ids and ids[cut] in visual_ids:
        cut -= 1  # inside a block: move to its start
    if cut == 0 or all(lab == IGNORE_INDEX for lab in labels[:cut]):
        return None
    return cut


class ConversationDataset(torch.utils.data.Dataset):
    """Samples of one or more sources, tokenized for `model` (an InterleaveModel: its tokenizer,
    token ids and visual plans)."""

    def __init__(self, sources: Sequence[Source], model, *, max_len: int = 4096, image_format: str = "interleaved",
                 front_ratio: float = 0.5, num_frames: int = 10, system: Optional[str] = processing.DEFAULT_SYSTEM,
                 seed: int = 0):
        if image_format not in FORMATS:
            raise ValueError(f"image_format must be one of {FORMATS}, got {image_format!r}")
        if isinstance(sources, (str, Source)):
            sources = [sources]
        self.sources = [s if isinstance(s, Source) else Source(s) for s in sources]
        self.samples = [read_samples(s.path) for s in self.sources]
        self.index = mixture_indices([len(x) for x in self.samples], [s.weight for s in self.sources], seed)
        self.model = model
        self.max_len, self.image_format, self.front_ratio = max_len, image_format, front_ratio
        self.num_frames, self.system, self.seed = num_frames, system, seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        source, j = self.index[i]
        raw = self.samples[source][j]
        try:
            return self._build(raw, self.sources[source].image_root, i)
        except _Skip as e:
            return {"skip": f"{raw.get('id', f'{source}:{j}')}: {e}"}

    def _build(self, raw: dict, root: str, i: int) -> dict:
        from .model import Video
        turns = []
        for t in raw.get("conversations", []):
            role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                    "system": "system"}.get(t.get("from"))
            if role is None or not isinstance(t.get("value"), str):
                raise _Skip(f"bad conversation turn {t!r:.80}")
            turns.append((role, t["value"].replace("<video>", "<image>")))
        if not any(r == "assistant" for r, _ in turns):
            raise _Skip("no assistant turn to learn from")
        images = raw.get("image") or []
        images = [images] if isinstance(images, str) else list(images)
        visuals = []
        for name in images:
            path = os.path.join(root, name)
            if not os.path.exists(path):
                raise _Skip(f"missing image {path}")
            try:
                visuals.append(_load_image(path))
            except Exception as e:  # noqa: BLE001 (any decoder error skips the sample)
                raise _Skip(f"undecodable image {path}: {type(e).__name__}")
        holders = sum(processing.count_placeholders(text)[0] for _, text in turns)
        if raw.get("video"):
            path = os.path.join(root, raw["video"])
            if not os.path.exists(path):
                raise _Skip(f"missing video {path}")
            try:
                frames = _load_frames(path, self.num_frames)
            except Exception as e:  # noqa: BLE001
                raise _Skip(f"undecodable video {path}: {type(e).__name__}: {e}")
            video_holders = holders - len(visuals)
            if video_holders == 1 and self.model.kind == "onevision":
                visuals.append(Video(frames))
                turns = _video_placeholder(turns, len(visuals) - 1)
            elif video_holders == 1:  # the interleave model: a video is its frames as images
                visuals.extend(frames)
                turns = _expand_placeholder(turns, len(visuals) - len(frames), len(frames))
            elif video_holders == len(frames):
                visuals.extend(frames)
            else:
                raise _Skip(f"{holders} placeholders for {len(images)} images and a {len(frames)}-frame video")
        elif holders != len(visuals):
            raise _Skip(f"{holders} <image> placeholders but {len(visuals)} images")
        fmt = self.image_format
        if fmt == "mixed":
            fmt = "front" if random.Random(self.seed * 1_000_003 + i).random() < self.front_ratio else "interleaved"
        plans = self.model.plan_visuals([visuals])[0] if visuals else []
        video_id = getattr(self.model.config, "video_token_id", None)
        ids, labels = processing.encode_chat(self.model.tokenizer, turns, plans, system=self.system, image_format=fmt,
                                             image_token_id=self.model.image_token_id, video_token_id=video_id,
                                             ignore_index=IGNORE_INDEX)
        visual_ids = {self.model.image_token_id} | ({video_id} if video_id is not None else set())
        cut = truncate(ids, labels, self.max_len, visual_ids)
        if cut is None:
            raise _Skip(f"{len(ids)} tokens > max_len {self.max_len} and nothing to learn before a visual block")
        kept = len(plans) if cut == len(ids) else _visuals_before(ids[:cut], plans, visual_ids)
        if kept < len(plans) and self.model.kind == "onevision":
            # OneVision tiles a sample's images only when it has one: dropping images would change the
            # remaining images' token counts.
            raise _Skip(f"{len(ids)} tokens > max_len {self.max_len} and cutting would drop images")
        return {"input_ids": ids[:cut], "labels": labels[:cut], "visuals": _keep_visuals(visuals, plans, kept),
                "truncated": cut < len(ids), "visual_tokens": sum(1 for t in ids[:cut] if t in visual_ids)}


class _Skip(Exception):
    pass


def _video_placeholder(turns, index):
    """The index-th placeholder (counting all turns) becomes <video>."""
    out, k = [], 0
    for role, text in turns:
        pieces = text.split("<image>")
        rebuilt = pieces[0]
        for piece in pieces[1:]:
            rebuilt += ("<video>" if k == index else "<image>") + piece
            k += 1
        out.append((role, rebuilt))
    return out


def _expand_placeholder(turns, index, count):
    out, k = [], 0
    for role, text in turns:
        pieces = text.split("<image>")
        rebuilt = pieces[0]
        for piece in pieces[1:]:
            rebuilt += ("<image>" * count if k == index else "<image>") + piece
            k += 1
        out.append((role, rebuilt))
    return out


def _visuals_before(ids, plans, visual_ids) -> int:
    """How many whole visual blocks the truncated ids still hold."""
    n = sum(1 for t in ids if t in visual_ids)
    kept, total = 0, 0
    for p in plans:
        if total + p.num_tokens > n:
            break
        total += p.num_tokens
        kept += 1
    return kept


def _keep_visuals(visuals, plans, kept_plans):
    """The visual inputs of the first kept_plans plans (a Video is one plan)."""
    return list(visuals[:kept_plans])


def collate(samples: Sequence[dict], pad_id: int = 0) -> dict:
    """Right-pads a batch (labels with -100, attention_mask 0), keeps the visual inputs as uint8
    per sample, and counts the skipped samples and their reasons."""
    good = [s for s in samples if "skip" not in s]
    reasons = [s["skip"] for s in samples if "skip" in s]
    batch = {"skipped": len(reasons), "skip_reasons": reasons, "truncated": sum(s["truncated"] for s in good),
             "visual_tokens": sum(s["visual_tokens"] for s in good)}
    if not good:
        return {**batch, "input_ids": None}
    longest = max(len(s["input_ids"]) for s in good)
    ids = torch.full((len(good), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(good), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(good), longest), dtype=torch.long)
    for b, s in enumerate(good):
        n = len(s["input_ids"])
        ids[b, :n] = torch.tensor(s["input_ids"])
        labels[b, :n] = torch.tensor(s["labels"])
        mask[b, :n] = 1
    return {**batch, "input_ids": ids, "labels": labels, "attention_mask": mask, "visuals": [s["visuals"] for s in good]}


def first_fit(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Sample indices grouped into rows of at most max_len tokens: longest first, each into the
    first row with room (first-fit decreasing). A sample longer than max_len gets a row alone."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_len - lengths[i])
    return rows


def collate_packed(samples: Sequence[dict], max_len: int, pad_id: int = 0, varlen: bool = False) -> dict:
    """Like `collate`, but packs the samples into rows of at most max_len tokens (first_fit): each
    sample keeps its own positions (position_ids restart at 0) and attends only to itself (a
    block-diagonal causal mask [R, 1, L, L], True = attend; padding attends to itself only). Its
    first label is ignored, so no token learns across a sample boundary. `visuals` lists the
    samples' inputs in row order, which is the order of their placeholders in the packed ids.

    varlen=True (for flash-attn's varlen kernels or FlexAttention): one row [1, T] holding every
    sample back to back, no padding and no mask (`attention_mask` None): transformers finds the
    sample boundaries where position_ids restart (flash-attn: `cu_seqlens`; flex: a block mask).
    `cu_seqlens` (int32 [n + 1]) is returned too, for callers that call the kernels themselves."""
    base = collate([s for s in samples if "skip" in s], pad_id)  # the skip counts
    good = [s for s in samples if "skip" not in s]
    base.update(truncated=sum(s["truncated"] for s in good), visual_tokens=sum(s["visual_tokens"] for s in good))
    if not good:
        return {**base, "input_ids": None}
    if varlen:
        too_long = [len(s["input_ids"]) for s in good if len(s["input_ids"]) > max_len]
        if too_long:
            raise ValueError(f"collate_packed: a sample of {too_long[0]} tokens is longer than max_len={max_len}")
        ids = torch.tensor([t for s in good for t in s["input_ids"]], dtype=torch.long)[None]
        labels = torch.tensor([t for s in good for t in s["labels"]], dtype=torch.long)[None]
        lengths = torch.tensor([len(s["input_ids"]) for s in good])
        starts = torch.cumsum(lengths, 0) - lengths
        labels[0, starts] = IGNORE_INDEX
        positions = torch.arange(ids.shape[1]) - torch.repeat_interleave(starts, lengths)
        cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int32), torch.cumsum(lengths, 0).to(torch.int32)])
        return {**base, "input_ids": ids, "labels": labels, "position_ids": positions[None], "attention_mask": None,
                "cu_seqlens": cu_seqlens, "visuals": [s["visuals"] for s in good],
                "rows": [list(range(len(good)))], "padding": 0}
    rows = first_fit([len(s["input_ids"]) for s in good], max_len)
    width = max(sum(len(good[i]["input_ids"]) for i in row) for row in rows)
    R = len(rows)
    ids = torch.full((R, width), pad_id, dtype=torch.long)
    labels = torch.full((R, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((R, width), dtype=torch.long)
    segment = torch.full((R, width), -1, dtype=torch.long)
    visuals = []
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row):
            s = good[i]
            n = len(s["input_ids"])
            ids[r, at:at + n] = torch.tensor(s["input_ids"])
            labels[r, at:at + n] = torch.tensor(s["labels"])
            labels[r, at] = IGNORE_INDEX
            positions[r, at:at + n] = torch.arange(n)
            segment[r, at:at + n] = k
            visuals.append(s["visuals"])
            at += n
    pad = segment < 0
    segment[pad] = -1 - torch.arange(int(pad.sum()))  # every padding position its own segment
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (segment[:, :, None] == segment[:, None, :]) & causal
    return {**base, "input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": mask[:, None],
            "visuals": visuals, "rows": rows, "padding": int(pad.sum())}
