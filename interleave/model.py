"""InterleaveModel: a LLaVA-NeXT-Interleave model whose whole visual path runs on our ops.

    model = InterleaveModel.from_pretrained("llava-interleave-qwen-0.5b-hf")   # a local folder
    batch = model.prepare(["<image><image>What changed?"], [[img_a, img_b]])
    out = model(**batch, labels=labels)          # loss, logits (visual positions never labelled)
    text = interleave.generate(model, "<image>Describe.", [img])

Thin on purpose: it holds transformers' own model (SigLIP encoder layers, projector, Qwen2 causal
LM, caches, generation), patched by interleave.hf.patch so that the visual path (truncated tower,
pack_tokens) and the merge (merge_tokens) run on our ops, plus interleave.hf.ImageProcessor
(anyres_tiles) for the pixels and interleave.processing for the prompt. Llava (the
llava-interleave-qwen-*-hf layout: 729 tokens per image, frames and views as images),
LlavaNext (anyres) and LlavaOnevision (anyres_max_9 single images, 730-token multi-image, bilinear
pooled video) checkpoints all load; the mode comes from the config.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Union

import torch

from . import plan as planning, processing
from .hf import ImageProcessor, to_rgb_uint8
from .ops.anyres_tiles import normalization_table
from .patching import _image_plans, _inner, _kind, patch

_ARCHITECTURES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
                  "llava_onevision": "LlavaOnevisionForConditionalGeneration"}


_HUB_TOWER, _NEW_TOWER = "vision_tower.vision_model.", "vision_tower."


def _hub_key(key: str) -> str:
    """A checkpoint key with a recent transformers' tower prefix (`vision_tower.*`) in the Hub's
    layout (`vision_tower.vision_model.*`); other keys unchanged."""
    if key.startswith(_NEW_TOWER) and not key.startswith(_HUB_TOWER):
        return _HUB_TOWER + key[len(_NEW_TOWER):]
    return key


def _reads_hub_tower_only(config) -> bool:
    """Whether this transformers' vision tower holds its layers under `vision_model` (4.57 and
    5.0: it reads the Hub's `vision_tower.vision_model.*` keys only); later 5.x releases hold them
    directly and read both layouts. Asked of the tower class itself, built on the meta device."""
    import transformers
    with torch.device("meta"):
        tower = transformers.AutoModel.from_config(config.vision_config)
    return hasattr(tower, "vision_model")


def _hub_layout_state_dict(path: str, config) -> Optional[dict]:
    """Recent transformers releases save the vision tower as `vision_tower.*` and read that and the
    Hub's `vision_tower.vision_model.*` (REFERENCE.md section 10); 4.57 and 5.0 read only the Hub's,
    and load a checkpoint saved by a recent release with a randomly initialized tower and a warning.
    For those, such a checkpoint's tensors with the tower keys in the Hub layout (for
    from_pretrained's state_dict); else None: transformers reads the files itself. Safetensors
    files (one or an index's shards)."""
    import json

    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(single):
        files = ["model.safetensors"]
    else:
        return None
    from safetensors import safe_open
    keys = []
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt") as f:
            keys += list(f.keys())
    if all(_hub_key(k) == k for k in keys) or not _reads_hub_tower_only(config):
        return None
    from safetensors.torch import load_file
    return {_hub_key(k): v for name in files for k, v in load_file(os.path.join(path, name)).items()}


@dataclasses.dataclass
class Video:
    """A video as its (already sampled) frames, uint8 [H, W, 3] each (or a [F, H, W, 3] tensor).
    OneVision models pool it as one `<video>`; Llava/LlavaNext models see each frame as an `<image>`."""
    frames: Union[Sequence, torch.Tensor]


Visual = Union[torch.Tensor, "np.ndarray", Video, object]  # an image (array, tensor, PIL) or a Video


class InterleaveModel(torch.nn.Module):
    def __init__(self, hf_model, tokenizer=None, image_processor: Optional[ImageProcessor] = None):
        super().__init__()
        self.hf = patch(hf_model)
        inner = _inner(hf_model)
        self.kind = _kind(inner)
        self.config = hf_model.config
        self.tokenizer = tokenizer
        vision = self.config.vision_config
        if image_processor is None:  # SigLIP's normalization (mean = std = 0.5), the model's tile size
            image_processor = ImageProcessor(
                {"llava": "siglip", "llava_next": "llava_next", "onevision": "onevision"}[self.kind],
                image_mean=[0.5] * 3, image_std=[0.5] * 3, size=vision.image_size,
                grid_pinpoints=getattr(self.config, "image_grid_pinpoints", None))
        self.image_processor = image_processor

    # ---- loading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, *, dtype: Optional[torch.dtype] = None,
                        device: Union[str, torch.device, None] = None) -> "InterleaveModel":
        """Loads a local transformers checkpoint folder of LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration or LlavaOnevisionForConditionalGeneration (transformers reads
        both its 4.57 and 5.x key layouts), its tokenizer and, when present, its image processor's
        settings. Never touches the network."""
        import transformers

        from .transformers_compat import require_supported
        require_supported("InterleaveModel.from_pretrained")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"InterleaveModel.from_pretrained: {path!r} is not a folder (give a local "
                                    "checkpoint directory; nothing is downloaded)")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"InterleaveModel.from_pretrained: {path!r} has no config.json")
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        arch = _ARCHITECTURES.get(config.model_type)
        if arch is None:
            raise ValueError(f"InterleaveModel.from_pretrained: model_type {config.model_type!r} is not one of "
                             f"{sorted(_ARCHITECTURES)}")
        kwargs = {"dtype": dtype} if dtype is not None else {}
        renamed = _hub_layout_state_dict(path, config)
        if renamed is None:
            model = getattr(transformers, arch).from_pretrained(path, local_files_only=True, **kwargs)
        else:  # (4.57 and 5.0 take a state_dict only without a path)
            model = getattr(transformers, arch).from_pretrained(None, config=config, state_dict=renamed, **kwargs)
        tokenizer = None
        if any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            tokenizer.padding_side = "left"
        processor = None
        if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            try:
                processor = ImageProcessor.from_hf(transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True))
            except (TypeError, ValueError, OSError):
                processor = None  # an unsupported processor: keep the SigLIP defaults
        out = cls(model.eval(), tokenizer, processor)
        return out.to(device) if device is not None else out

    @classmethod
    def from_transformers(cls, model, tokenizer=None, image_processor=None) -> "InterleaveModel":
        """Wraps (and patches) an in-memory transformers model."""
        return cls(model, tokenizer, image_processor)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def image_token_id(self) -> int:
        c = self.config
        return c.image_token_id if getattr(c, "image_token_id", None) is not None else c.image_token_index

    # ---- inputs -------------------------------------------------------------------------------------
    def plan_visuals(self, visuals: Sequence[Sequence[Visual]]) -> list[list]:
        """The plans (interleave.plan) of each sample's visual inputs in placeholder order, without
        touching pixels: what `visual_inputs` and the patched visual path will produce (a Video is
        one plan on OneVision, one plan per frame elsewhere)."""
        tile, patch = self.config.vision_config.image_size, self.config.vision_config.patch_size
        out = []
        for sample in visuals:
            sizes, kinds = [], []
            for item in sample:
                if isinstance(item, Video) and self.kind == "onevision":
                    kinds.append(("video", len(_frames(item))))
                elif isinstance(item, Video):
                    for f in _frames(item):
                        kinds.append(("image", len(sizes)))
                        sizes.append(tuple(f.shape[:2]))
                else:
                    kinds.append(("image", len(sizes)))
                    sizes.append(tuple(to_rgb_uint8(item).shape[:2]))
            if self.kind == "llava":
                image_plans = [planning.plan_image(1, 1, "llava", tile=tile, patch=patch)] * len(sizes)
            elif sizes:
                image_plans = _image_plans(_inner(self.hf), self.kind, torch.tensor(sizes),
                                           [len(sizes)] if self.kind == "onevision" else None)
            else:
                image_plans = []
            out.append([planning.plan_video(n, "bilinear", tile=tile, patch=patch) if k == "video" else image_plans[n]
                        for k, n in kinds])
        return out

    def visual_inputs(self, visuals: Sequence[Sequence[Visual]]):
        """Pixels and plans for a batch: visuals[b] is sample b's inputs in placeholder order.
        Returns (model kwargs, per-sample plans); the plans are `plan_visuals`'."""
        # Convert once (a no-op for uint8 RGB): the processor and the planning read the same images.
        visuals = [[item if isinstance(item, Video) else to_rgb_uint8(item, i) for i, item in enumerate(sample)]
                   for sample in visuals]
        kwargs = self.pixel_maker()(visuals, self.device)
        return to_model(kwargs, self.device, self.hf.dtype), self.plan_visuals(visuals)

    def pixel_maker(self, uint8: Optional[bool] = False) -> "PixelMaker":
        """The pixel half of visual_inputs without the model: small and picklable, for tiling in
        DataLoader workers (the trainer's --tile-in-workers). uint8=True: uint8 tiles instead of
        transformers' normalized pixel_values, for the patched tower only (its fused patch embedding
        folds the normalization in); None: uint8 when this model takes them (the trainer's choice).
        visual_inputs/prepare keep transformers' pixel_values, which the unpatched model also reads."""
        if uint8 is None:
            uint8 = self._uint8_tiles()
        elif uint8 and not self._uint8_tiles():
            raise ValueError("InterleaveModel.pixel_maker: uint8 tiles need the patched model with a fused "
                             "patch embedding whose mean/std are the image processor's")
        return PixelMaker(self.kind, self.image_processor, self.config.vision_config.image_size, uint8=uint8)

    def _uint8_tiles(self) -> bool:
        """Whether the patched tower takes uint8 tiles: a fused patch embedding (interleave.nn) whose
        folded normalization is this processor's. Unpatched (transformers' path) it needs floats."""
        from .patching import _EMBED_ATTR, _PATCH_ATTR
        inner = _inner(self.hf)
        fused = inner.__dict__.get(_EMBED_ATTR) if _PATCH_ATTR in inner.__dict__ else None
        if fused is None:
            return False
        table = normalization_table(fused.image_mean, fused.image_std)
        return torch.equal(table, self.image_processor.table.cpu())

    def prepare(self, prompts: Sequence[str], visuals: Optional[Sequence[Sequence[Visual]]] = None, *,
                chat: bool = True, system: Optional[str] = processing.DEFAULT_SYSTEM,
                image_format: str = "interleaved") -> dict:
        """Model inputs for a batch of prompts (left-padded, with attention_mask): each prompt's
        `<image>` / `<video>` placeholders are expanded to its visual inputs' token counts. A
        Video on a Llava/LlavaNext model is one `<image>` per frame in the prompt. chat=True wraps
        each prompt as one ChatML user turn (with the system prompt) and opens the assistant turn."""
        if self.tokenizer is None:
            raise ValueError("InterleaveModel.prepare: the model has no tokenizer (load a checkpoint with one or "
                             "pass tokenizer= to from_transformers)")
        if isinstance(prompts, str):
            prompts = [prompts]
        visuals = visuals if visuals is not None else [[] for _ in prompts]
        if len(visuals) != len(prompts):
            raise ValueError(f"InterleaveModel.prepare: {len(prompts)} prompts but {len(visuals)} visual lists")
        kwargs, plans = self.visual_inputs(visuals) if any(len(v) for v in visuals) else ({}, [[] for _ in prompts])
        ids = []
        video_id = getattr(self.config, "video_token_id", None)
        for text, p in zip(prompts, plans):
            text = processing.chat_prompt(text, system=system, image_format=image_format) if chat else text
            ids.append(processing.encode(self.tokenizer, text, p, image_token_id=self.image_token_id,
                                         video_token_id=video_id))
        longest = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (longest - len(x)) + x for x in ids], device=self.device)
        attention_mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids], device=self.device)
        return {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, visuals: Optional[Sequence[Sequence[Visual]]] = None,
                **pixel_kwargs):
        """(input_ids, visual inputs, labels) -> transformers' output (loss, logits). Visual inputs
        come either as `visuals` (raw images/videos per sample, processed here) or as the pixel
        kwargs `prepare` returns. Positions holding image/video tokens never carry a label."""
        if visuals is not None:
            kwargs, _ = self.visual_inputs(visuals)
            pixel_kwargs = {**kwargs, **pixel_kwargs}
        if labels is not None:
            labels = labels.clone()
            for tid in (self.image_token_id, getattr(self.config, "video_token_id", None)):
                if tid is not None:
                    labels[input_ids == tid] = -100
            if attention_mask is not None:
                labels[attention_mask == 0] = -100
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **pixel_kwargs)


@dataclasses.dataclass
class PixelMaker:
    """visuals -> the model's pixel kwargs (pixel_values, image_sizes, batch_num_images,
    pixel_values_videos) on `device`: float32 normalized pixels (to_model casts them to the model's
    dtype), or uint8 tiles with `uint8`. A video is
    frames as images for the interleave (Llava) and LLaVA-NeXT layouts, pixel_values_videos for
    OneVision. Holds only the image processor and the tile size, so it can run in DataLoader workers."""
    kind: str
    image_processor: ImageProcessor
    tile: int
    # uint8 tiles [..., S, S, 3] instead of normalized pixels: the patch embedding folds the
    # normalization into its weights, so the pixels stay uint8 (4x fewer bytes) until it reads them.
    uint8: bool = False

    def __call__(self, visuals: Sequence[Sequence[Visual]], device) -> dict:
        visuals = [[item if isinstance(item, Video) else to_rgb_uint8(item, i) for i, item in enumerate(sample)]
                   for sample in visuals]
        images_per_sample, videos = [], []
        for sample in visuals:
            images = []
            for item in sample:
                if isinstance(item, Video) and self.kind != "onevision":
                    images.extend(_frames(item))  # frames as images (the interleave model's video)
                elif isinstance(item, Video):
                    videos.append(_frames(item))
                else:
                    images.append(item)
            images_per_sample.append(images)
        kwargs: dict = {}
        flat = [im for s in images_per_sample for im in s]
        if flat:
            batch = self.image_processor([s for s in images_per_sample if s] if self.kind == "onevision" else flat,
                                         device=device, normalize=not self.uint8)
            kwargs["pixel_values"] = batch["pixel_values"]
            if self.kind != "llava":
                kwargs["image_sizes"] = batch["image_sizes"]
                if "batch_num_images" in batch:
                    kwargs["batch_num_images"] = torch.as_tensor(batch["batch_num_images"])
        if videos:
            counts = {len(v) for v in videos}
            if len(counts) != 1:
                raise ValueError(f"InterleaveModel: videos of one batch need the same number of frames, got {sorted(counts)}")
            from .ops import anyres_tiles
            table = None if self.uint8 else self.image_processor._table_on(torch.device(device))
            # One call for every frame of the batch (one tile each), viewed as [videos, frames, ...]:
            # no per-video results stacked into a second copy.
            tiles = anyres_tiles([f.to(device) for v in videos for f in v], "llava", tile=self.tile,
                                 normalize=table).tiles
            kwargs["pixel_values_videos"] = tiles.view(len(videos), len(videos[0]), *tiles.shape[1:])
        return kwargs


def to_model(kwargs: dict, device, dtype) -> dict:
    """Pixel kwargs from PixelMaker moved to the model's device, pixels in its dtype (batch_num_images
    stays where it is: transformers reads it on the host)."""
    out = {}
    for key, value in kwargs.items():
        if key in ("pixel_values", "pixel_values_videos"):  # uint8 tiles stay uint8
            out[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        elif key == "image_sizes":
            out[key] = value.to(device)
        else:
            out[key] = value
    return out


def _frames(video: Video) -> list[torch.Tensor]:
    frames = video.frames
    if isinstance(frames, torch.Tensor) and frames.dim() == 4:
        frames = list(frames)
    return [to_rgb_uint8(f, i) for i, f in enumerate(frames)]
