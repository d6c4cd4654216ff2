"""What differs between transformers 4.57 (the last 4.x, which the package supports) and 5.x, in
one place: where its Pillow and torchvision image processors live, and how its Llava-family models
return their visual features. The drop-ins themselves (interleave.hf.patch, ImageProcessor.from_hf,
InterleaveModel) work on both; the benchmarks, the demo and the tests use these to build the same
references under either version.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect

import torch

# kind -> (model folder, module stem, class stem) of transformers' image processors
_PROCESSORS = {"onevision": ("llava_onevision", "llava_onevision", "LlavaOnevision"),
               "llava_next": ("llava_next", "llava_next", "LlavaNext"),
               "siglip": ("siglip", "siglip", "Siglip")}


def major_version() -> int:
    import transformers
    return int(transformers.__version__.split(".")[0])


def pil_image_processor_class(kind: str):
    """transformers' image processor of `kind` ("onevision", "llava_next", "siglip") that resizes
    with Pillow: 5.x's `XImageProcessorPil` (image_processing_pil_*), 4.57's `XImageProcessor`
    (the "slow" one). Raises ImportError without transformers (or Pillow)."""
    folder, stem, cls = _PROCESSORS[kind]
    if major_version() >= 5:
        module = importlib.import_module(f"transformers.models.{folder}.image_processing_pil_{stem}")
        return getattr(module, f"{cls}ImageProcessorPil")
    importlib.import_module("PIL.Image")  # 4.57's slow processors resize with Pillow
    module = importlib.import_module(f"transformers.models.{folder}.image_processing_{stem}")
    return getattr(module, f"{cls}ImageProcessor")


def torchvision_image_processor_class(kind: str):
    """transformers' torchvision-backend image processor of `kind`: 5.x's `XImageProcessor` (its
    default class), 4.57's `XImageProcessorFast`; None without torchvision."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    folder, stem, cls = _PROCESSORS[kind]
    if major_version() >= 5:
        module = importlib.import_module(f"transformers.models.{folder}.image_processing_{stem}")
        return getattr(module, f"{cls}ImageProcessor")
    module = importlib.import_module(f"transformers.models.{folder}.image_processing_{stem}_fast")
    return getattr(module, f"{cls}ImageProcessorFast")


def _feature_rows(out) -> torch.Tensor:
    """[K, D] rows from what get_image_features / get_video_features return: 5.x an output whose
    pooler_output holds them (one tensor per image, or [videos, tokens, D]), 4.57 a list / tuple of
    per-image tensors or one tensor."""
    out = getattr(out, "pooler_output", out)
    if isinstance(out, (list, tuple)):
        return torch.cat([o.reshape(-1, o.shape[-1]) for o in out])
    return out.reshape(-1, out.shape[-1])


def image_features(inner, pixel_values: torch.Tensor, image_sizes=None, batch_num_images=None) -> torch.Tensor:
    """The rows transformers scatters into the image placeholders of a Llava / LlavaNext /
    LlavaOnevision inner model (`model.model`): its `get_image_features`, concatenated to [K, D].
    5.x returns an output (asked for with return_dict=True) whose pooler_output holds the per-image
    tensors; 4.57 returns them as a list (LlavaNext, LlavaOnevision) or an [images, tokens, D]
    tensor (Llava) and takes no return_dict."""
    params = inspect.signature(inner.get_image_features).parameters
    kwargs = {}
    if image_sizes is not None and "image_sizes" in params:
        kwargs["image_sizes"] = image_sizes
    if batch_num_images is not None and "batch_num_images" in params:
        kwargs["batch_num_images"] = batch_num_images
    if major_version() >= 5:
        kwargs["return_dict"] = True
    return _feature_rows(inner.get_image_features(pixel_values, **kwargs))


def video_features(inner, pixel_values_videos: torch.Tensor) -> torch.Tensor:
    """The rows transformers scatters into the video placeholders of a LlavaOnevision inner model:
    5.x's `get_video_features(...).pooler_output` (each video's pooled frames, then one newline
    row); 4.57's get_video_features returns the pooled frames and its forward appends the newline
    row, as done here. [K, D]."""
    if major_version() >= 5:
        return _feature_rows(inner.get_video_features(pixel_values_videos, return_dict=True))
    config = inner.config
    videos = inner.get_video_features(pixel_values_videos, config.vision_feature_layer,
                                      config.vision_feature_select_strategy)
    newline = inner.image_newline[None, None, :].repeat(videos.shape[0], 1, 1).to(videos)
    return torch.cat((videos, newline), dim=1).flatten(0, 1)
