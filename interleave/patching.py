"""interleave.hf.patch / unpatch: a loaded transformers Llava / LlavaNext / LlavaOnevision model runs
its visual path and merge on our ops.

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(path)
    interleave.hf.patch(model)     # in place; returns the model
    out = model.generate(**inputs) # same tokens as before, faster visual path
    interleave.hf.unpatch(model)

What is replaced, and why this way. transformers computes `inputs_embeds = embed_tokens(input_ids)`,
the image features (the whole vision tower with every hidden state kept, then the projector, then
a Python loop of pack_image_features), and `masked_scatter`s them, inline in the inner model's
`forward` (LlavaModel/LlavaNextModel/LlavaOnevisionModel). Copying that forward would break on every
release, so the patch wraps it instead: when `input_ids` and pixels come in, the wrapper computes the
visual tokens itself (our fused patch embedding over the tower's own parameters, then only the
encoder layers the feature layer needs, no post-LayerNorm and no stored hidden states; transformers' projector; `pack_tokens`), builds
`inputs_embeds` with `merge_tokens`, and calls the original forward with `inputs_embeds` (and no
pixels); every other call goes to the original forward unchanged (generation's decode steps, calls
with `inputs_embeds`). The language model, caches, loss and generation are transformers' own.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

from . import nvtx, plan as planning
from .ops import merge_tokens, pack_tokens

_PATCH_ATTR = "_interleave_original_forward"


def _inner(model):
    """The model holding vision_tower / multi_modal_projector / language_model."""
    inner = getattr(model, "model", model)
    if not all(hasattr(inner, name) for name in ("vision_tower", "multi_modal_projector")):
        raise TypeError(f"interleave.hf.patch: {type(model).__name__} is not a Llava / LlavaNext / "
                        "LlavaOnevision model (no vision_tower / multi_modal_projector)")
    return inner


def _kind(inner) -> str:
    name = type(inner).__name__
    for prefix, kind in (("LlavaOnevision", "onevision"), ("LlavaNext", "llava_next"), ("Llava", "llava")):
        if name.startswith(prefix):
            return kind
    raise TypeError(f"interleave.hf.patch: unsupported model {name}; supported: Llava, LlavaNext, LlavaOnevision")


_EMBED_ATTR = "_interleave_patch_embedding"


def vision_features(vision_tower, pixel_values: torch.Tensor, feature_layer: int, embeddings=None) -> torch.Tensor:
    """transformers' `vision_tower(pixel_values).hidden_states[feature_layer]`, computing only what
    that needs: the embeddings and the first layers, no post-LayerNorm (SiglipVisionModel layout of
    transformers 5.x, `vision_model.*` of 4.x)."""
    vm = getattr(vision_tower, "vision_model", vision_tower)
    layers = vm.encoder.layers
    keep = feature_layer + len(layers) + 1 if feature_layer < 0 else feature_layer
    if not 0 <= keep <= len(layers):
        raise ValueError(f"interleave: vision_feature_layer={feature_layer} is outside a {len(layers)}-layer tower")
    with nvtx.range("vision/embeddings"):
        hidden = (embeddings or vm.embeddings)(pixel_values)
    with nvtx.range("vision/encoder"):
        for layer in layers[:keep]:
            hidden = layer(hidden, None)
            if isinstance(hidden, tuple):  # transformers 4.x layers return (hidden_states,)
                hidden = hidden[0]
    return hidden


def _projected(inner, pixel_values: torch.Tensor, feature_layer, strategy) -> torch.Tensor:
    if not isinstance(feature_layer, int):
        raise NotImplementedError("interleave.hf.patch: a list of vision_feature_layer values is not supported")
    features = vision_features(inner.vision_tower, pixel_values, feature_layer, inner.__dict__.get(_EMBED_ATTR))
    if strategy == "default":
        features = features[:, 1:]
    with nvtx.range("projector"):
        return inner.multi_modal_projector(features)


def _image_plans(inner, kind: str, image_sizes, batch_num_images) -> list:
    config = inner.config
    tile, patch = config.vision_config.image_size, config.vision_config.patch_size
    pinpoints = [tuple(p) for p in config.image_grid_pinpoints]
    sizes = [(int(h), int(w)) for h, w in torch.as_tensor(image_sizes).tolist()]
    if kind == "llava_next":
        return [planning.plan_image(h, w, "anyres", pinpoints=pinpoints, tile=tile, patch=patch) for h, w in sizes]
    mode = getattr(config, "vision_aspect_ratio", "anyres_max_9")
    if batch_num_images is None:
        patched = [True] * len(sizes)
    else:  # LlavaOnevisionModel.get_image_features: only single-image samples get anyres patches
        patched = [int(n) == 1 for n in torch.as_tensor(batch_num_images).tolist() for _ in range(int(n))]
    return [planning.plan_image(h, w, mode, pinpoints=pinpoints, tile=tile, patch=patch) if p
            else planning.plan_image(h, w, "llava", newline=True, tile=tile, patch=patch)
            for (h, w), p in zip(sizes, patched)]


def visual_path(model, pixel_values: torch.Tensor, plans, vision_feature_layer=None,
                vision_feature_select_strategy=None) -> torch.Tensor:
    """Visual tokens [K, hidden] of tiles/frames `pixel_values` [P, 3, S, S] described by `plans`
    (interleave.plan, in order): vision tower (truncated), projector, pack_tokens. Everything that
    depends on sizes is in the plans (Python objects), so `torch.compile(fullgraph=True)` of this
    plus merge_tokens has no graph break (tests/test_hf_patch.py)."""
    inner = _inner(model)
    config = inner.config
    layer = vision_feature_layer if vision_feature_layer is not None else config.vision_feature_layer
    strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
    projected = _projected(inner, pixel_values, layer, strategy)
    if _kind(inner) == "llava":
        return projected.flatten(0, 1)
    return pack_tokens(projected, plans, inner.image_newline)


def visual_tokens(model, pixel_values=None, image_sizes=None, pixel_values_videos=None, batch_num_images=None,
                  vision_feature_layer=None, vision_feature_select_strategy=None):
    """The visual tokens of a batch, in merge order, computed with our ops: (image_tokens or None,
    video_tokens or None), each [K, hidden]. Equal to what transformers scatters into the
    placeholders (bitwise for the copy modes, within rounding where OneVision shrinks)."""
    inner = _inner(model)
    kind = _kind(inner)
    config = inner.config
    layer = vision_feature_layer if vision_feature_layer is not None else config.vision_feature_layer
    strategy = vision_feature_select_strategy or config.vision_feature_select_strategy
    images = videos = None
    if pixel_values is not None:
        plans = None if kind == "llava" else _image_plans(inner, kind, image_sizes, batch_num_images)
        if plans is not None and pixel_values.dim() == 5:  # [B, max_patches, 3, S, S], zero-padded per image
            if all(p.num_patches == pixel_values.shape[1] for p in plans):  # no padding (one image): a view
                pixel_values = pixel_values.flatten(0, 1)
            else:
                pixel_values = torch.cat([pv[:p.num_patches] for pv, p in zip(pixel_values, plans)])
        images = visual_path(inner, pixel_values, plans, layer, strategy)
    if pixel_values_videos is not None:
        if kind != "onevision":
            raise NotImplementedError(f"interleave.hf.patch: videos of {type(inner).__name__} are not supported")
        batch, frames = pixel_values_videos.shape[:2]
        projected = _projected(inner, pixel_values_videos.flatten(0, 1), layer, strategy)
        plans = [planning.plan_video(frames, "bilinear", tile=config.vision_config.image_size,
                                     patch=config.vision_config.patch_size)] * batch
        videos = pack_tokens(projected, plans, inner.image_newline)
    return images, videos


def _in_placeholder_order(input_ids, image_id: int, video_id: int, image_tokens, video_tokens):
    """Image and video rows interleaved as their placeholders come in row-major `input_ids`: the
    k-th image placeholder takes image row k, the k-th video one video row k (transformers fills
    each kind with its own masked_scatter). The per-kind counts are checked against the rows
    (merge_tokens checks only the total): eagerly with one host sync and a ValueError naming both;
    under torch.compile as a device-side assertion, so that the graph has no break."""
    flat = input_ids.reshape(-1)
    is_image, is_video = flat == image_id, flat == video_id
    n_images, n_videos = image_tokens.shape[0], video_tokens.shape[0]
    counts = torch.stack([is_image.sum(), is_video.sum()])
    if torch.compiler.is_compiling():
        expected = torch.tensor([n_images, n_videos], device=counts.device)
        torch._assert_async(torch.all(counts == expected), "interleave: image/video placeholder counts differ "
                            "from the image/video token rows")
    else:
        found_images, found_videos = counts.tolist()
        if (found_images, found_videos) != (n_images, n_videos):
            raise ValueError(f"interleave: {found_images} image placeholder(s) for {n_images} image token rows "
                             f"and {found_videos} video placeholder(s) for {n_videos} video token rows")
    rows = torch.cat([image_tokens, video_tokens.to(image_tokens.dtype)])
    source = torch.where(is_image, torch.cumsum(is_image, 0) - 1, torch.cumsum(is_video, 0) - 1 + n_images)
    # placeholder positions in order, without a nonzero() (a stable sort puts them first)
    positions = torch.argsort((~(is_image | is_video)).to(torch.uint8), stable=True)[:n_images + n_videos]
    return rows.index_select(0, source[positions])


def _patched_forward(inner, original):
    kind = _kind(inner)

    @functools.wraps(original)
    def forward(input_ids=None, pixel_values=None, *args, **kwargs):
        videos = kwargs.get("pixel_values_videos")
        if args or input_ids is None or kwargs.get("inputs_embeds") is not None or \
                kwargs.get("mm_encoder_outputs") is not None or (pixel_values is None and videos is None):
            return original(input_ids, pixel_values, *args, **kwargs)
        kwargs.pop("pixel_values_videos", None)
        kwargs.pop("inputs_embeds", None)
        image_tokens, video_tokens = visual_tokens(
            inner, pixel_values, kwargs.pop("image_sizes", None), videos, kwargs.pop("batch_num_images", None),
            kwargs.pop("vision_feature_layer", None), kwargs.pop("vision_feature_select_strategy", None))
        kwargs.pop("image_sizes_videos", None)
        kwargs.pop("vision_aspect_ratio", None)
        embed = inner.get_input_embeddings()
        config = inner.config
        image_id = config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index
        if image_tokens is not None and video_tokens is not None:
            # Images and videos have their own placeholder ids and transformers fills each kind in
            # order: the rows of both, put in placeholder order, go through one merge over both ids.
            tokens = _in_placeholder_order(input_ids, image_id, config.video_token_id, image_tokens, video_tokens)
            embeds = merge_tokens(input_ids, embed.weight, tokens, [image_id, config.video_token_id],
                                  padding_idx=embed.padding_idx)
        else:
            tokens, token_id = (image_tokens, image_id) if image_tokens is not None else (video_tokens, config.video_token_id)
            embeds = merge_tokens(input_ids, embed.weight, tokens, token_id, padding_idx=embed.padding_idx)
        with nvtx.range("language_model"):
            return original(None, None, *args, inputs_embeds=embeds, **kwargs)

    forward.__interleave_kind__ = kind
    return forward


def patch(model):
    """Patches `model` (a transformers Llava/LlavaNext/LlavaOnevision model, or its inner model) in
    place so that its visual path and merge run on interleave's ops; returns it. Idempotent."""
    from .transformers_compat import require_supported
    require_supported("interleave.hf.patch")
    inner = _inner(model)
    _kind(inner)
    if _PATCH_ATTR in inner.__dict__:
        return model
    original = inner.forward
    inner.__dict__[_PATCH_ATTR] = original
    inner.forward = _patched_forward(inner, original)
    # Our patch embedding (interleave.ops.patch_embed) over the tower's own parameters (shared, not
    # copied; kept out of the module tree so the state dict is unchanged).
    vm = getattr(inner.vision_tower, "vision_model", inner.vision_tower)
    if type(vm.embeddings).__name__ == "SiglipVisionEmbeddings" and not getattr(vm.embeddings, "position_embedding", None) is None:
        from .nn import FusedSiglipPatchEmbedding
        inner.__dict__[_EMBED_ATTR] = FusedSiglipPatchEmbedding.from_hf(vm.embeddings)
    return model


def unpatch(model):
    """Undoes `patch`; returns the model."""
    inner = _inner(model)
    if _PATCH_ATTR in inner.__dict__:
        del inner.__dict__["forward"]
        del inner.__dict__[_PATCH_ATTR]
        inner.__dict__.pop(_EMBED_ATTR, None)
    return model


def is_patched(model) -> bool:
    return _PATCH_ATTR in _inner(model).__dict__
