"""What differs between transformers releases (4.57, the last 4.x, which the package supports, to
the current 5.x), in one place: where its Pillow and torchvision image processors live, how its
Llava-family models return their visual features, whether its convert_to_rgb composites alpha, and
the oldest release supported. The drop-ins (interleave.hf.patch, ImageProcessor.from_hf,
InterleaveModel) work on all of them; the benchmarks, the demo and the tests build the same
references under each through these.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import re

import torch

# kind -> (model folder, module stem, class stem) of transformers' image processors
_PROCESSORS = {"onevision": ("llava_onevision", "llava_onevision", "LlavaOnevision"),
               "llava_next": ("llava_next", "llava_next", "LlavaNext"),
               "siglip": ("siglip", "siglip", "Siglip")}


# The oldest transformers the package supports (pyproject's extras say the same).
MIN_VERSION = (4, 57)


def installed_version() -> str:
    import transformers
    return transformers.__version__


def major_version() -> int:
    return int(installed_version().split(".")[0])


def require_supported(what: str) -> None:
    """Raises ImportError naming `what`, the installed version and the fix when transformers is
    older than MIN_VERSION (transformers is not a hard dependency, so pip does not enforce it; an
    older one fails later, deep inside, on a missing class or argument)."""
    version = installed_version()
    found = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if found < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise ImportError(f"{what} needs transformers >= {need}, found {version}; "
                          f"pip install 'transformers>={need}'")


def _has_pil_backend_modules(folder: str, stem: str) -> bool:
    """Whether this transformers has the newer processor layout (a later 5.x): a Pillow-backed
    `image_processing_pil_*` module beside the torchvision-backed `image_processing_*`. Older ones
    (4.57, 5.0) have the Pillow-backed "slow" `image_processing_*` and a `..._fast` torchvision one."""
    return importlib.util.find_spec(f"transformers.models.{folder}.image_processing_pil_{stem}") is not None


def pil_image_processor_class(kind: str):
    """transformers' image processor of `kind` ("onevision", "llava_next", "siglip") that resizes
    with Pillow: `XImageProcessorPil` (image_processing_pil_*) where it exists, else the "slow"
    `XImageProcessor` (4.57, 5.0). Raises ImportError without transformers (or Pillow)."""
    folder, stem, cls = _PROCESSORS[kind]
    importlib.import_module("PIL.Image")
    if _has_pil_backend_modules(folder, stem):
        module = importlib.import_module(f"transformers.models.{folder}.image_processing_pil_{stem}")
        return getattr(module, f"{cls}ImageProcessorPil")
    module = importlib.import_module(f"transformers.models.{folder}.image_processing_{stem}")
    return getattr(module, f"{cls}ImageProcessor")


def torchvision_image_processor_class(kind: str):
    """transformers' torchvision-backend image processor of `kind`: `XImageProcessor` (the default
    class) beside an `image_processing_pil_*` module, else `XImageProcessorFast` (4.57, 5.0); None
    without torchvision."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    folder, stem, cls = _PROCESSORS[kind]
    if _has_pil_backend_modules(folder, stem):
        module = importlib.import_module(f"transformers.models.{folder}.image_processing_{stem}")
        return getattr(module, f"{cls}ImageProcessor")
    module = importlib.import_module(f"transformers.models.{folder}.image_processing_{stem}_fast")
    return getattr(module, f"{cls}ImageProcessorFast")


def converts_alpha_onto_white() -> bool:
    """Whether this transformers' `convert_to_rgb` composites transparency onto white (and takes
    `return_numpy`): recent 5.x releases; 4.57 and 5.0 convert PIL images with Pillow's
    convert("RGB") (alpha dropped) and leave arrays as they are (their processors then reject RGBA
    arrays)."""
    from transformers.image_transforms import convert_to_rgb
    return "return_numpy" in inspect.signature(convert_to_rgb).parameters


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
    """The rows transformers scatters into the video placeholders of a LlavaOnevision inner model,
    [K, D]: each video's pooled frames, then one newline row. Recent 5.x releases return them all
    in `get_video_features(...).pooler_output`; 5.0 (pooler_output) and 4.57 (a tensor) return the
    pooled frames only and their forward appends the newline row, as done here when the count says
    it is missing (REFERENCE.md section 7: frames x pooled tokens + 1)."""
    from .plan import plan_video
    config = inner.config
    if major_version() >= 5:
        out = inner.get_video_features(pixel_values_videos, return_dict=True).pooler_output
    else:
        out = inner.get_video_features(pixel_values_videos, config.vision_feature_layer,
                                       config.vision_feature_select_strategy)
    videos, frames = pixel_values_videos.shape[:2]
    out = out.reshape(videos, -1, out.shape[-1])
    expected = plan_video(frames, "bilinear", tile=config.vision_config.image_size,
                          patch=config.vision_config.patch_size).num_tokens
    if out.shape[1] == expected - 1:
        newline = inner.image_newline[None, None, :].repeat(videos, 1, 1).to(out)
        out = torch.cat((out, newline), dim=1)
    if out.shape[1] != expected:
        raise ValueError(f"transformers_compat.video_features: {out.shape[1]} rows per video, expected {expected}")
    return out.flatten(0, 1)
