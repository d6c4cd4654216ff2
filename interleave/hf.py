"""Drop-ins for transformers: fast image and video processors, and patches for loaded Llava models.

    from interleave.hf import ImageProcessor, VideoProcessor
    processor = ImageProcessor.from_hf(hf_image_processor)        # SigLIP, LLaVA-NeXT or OneVision
    batch = processor(images, return_tensors="pt", device="cuda")  # decode on CPU, tile on the GPU
    mm_processor.image_processor = ImageProcessor.from_hf(mm_processor.image_processor)  # inside transformers'
    mm_processor.video_processor = VideoProcessor.from_hf(mm_processor.video_processor)  # (within 2 levels)
    interleave.hf.patch(model)   # model's visual path + merge on our ops (interleave/patching.py)

The call signature and the BatchFeature keys are transformers' (`pixel_values`, `image_sizes`,
`batch_num_images`); `pixel_values` equal those of transformers' PIL processors bit for bit (same
Pillow resize, same float32 rescale/normalize arithmetic through a lookup table, zero batch padding),
computed by the anyres_tiles op in one call per batch.
"""
from __future__ import annotations

import itertools
import threading
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import nvtx, plan as planning
from .ops.anyres_tiles import anyres_tiles, normalization_table
from .patching import is_patched, patch, unpatch, visual_path, visual_tokens  # noqa: F401 (re-exported)

KINDS = ("siglip", "llava_next", "onevision")


def _same_setting(a, b) -> bool:
    """Settings compare as values: lists and tuples alike, numbers within float rounding, size
    dicts (transformers 5.x keeps a SizeDict dataclass) by their set keys."""
    import dataclasses

    def as_value(x):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            x = dataclasses.asdict(x)
        return {k: v for k, v in x.items() if v is not None} if isinstance(x, dict) else x
    a, b = as_value(a), as_value(b)
    if isinstance(a, dict) or isinstance(b, dict):
        return isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys() and \
            all(_same_setting(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        a, b = np.asarray(a, dtype=object).ravel().tolist(), np.asarray(b, dtype=object).ravel().tolist()
        return len(a) == len(b) and all(_same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def _kind_of(hf_image_processor) -> str:
    name = type(hf_image_processor).__name__
    if name.startswith("LlavaOnevision"):
        return "onevision"
    if name.startswith("LlavaNext"):
        return "llava_next"
    if name.startswith("Siglip"):
        return "siglip"
    raise TypeError(f"ImageProcessor.from_hf: unsupported processor {name}; supported: Siglip*, "
                    "LlavaNext*, LlavaOnevision* image processors")


def _square_size(size, what: str) -> int:
    """transformers SizeDict/dict with height == width -> that side."""
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    h, w = get("height"), get("width")
    if h is None or h != w:
        raise ValueError(f"ImageProcessor: only square {what} with height == width is supported, got {size}")
    return int(h)


def _pil_to_rgb(image) -> np.ndarray:
    """transformers' convert_to_rgb of a PIL image, as an array: recent 5.x releases composite
    transparency onto white (asked for as an array: their PIL return is deprecated), 4.57 and 5.0
    convert with Pillow's convert("RGB") (alpha dropped). Whichever is installed, so that
    pixel_values stay equal."""
    from transformers.image_transforms import convert_to_rgb

    from .transformers_compat import converts_alpha_onto_white
    if converts_alpha_onto_white():
        return convert_to_rgb(image, return_numpy=True)
    return np.asarray(convert_to_rgb(image))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """An [H, W, 4] uint8 array's alpha composited onto white, with recent transformers' arithmetic
    (image_transforms.convert_to_rgb of an array, float64, rounded half to even); the processors
    of 4.57 and 5.0 reject 4-channel arrays, so this is the one behaviour every version can match."""
    alpha = rgba[..., 3:4] / 255
    return np.round(alpha * rgba[..., :3] + (1 - alpha) * 255).astype(np.uint8)


def to_rgb_uint8(image, index: int = 0) -> torch.Tensor:
    """One image as uint8 [H, W, 3], converted to RGB as transformers does (convert_to_rgb:
    alpha composited onto white, grayscale and palette expanded; PIL images with the installed
    transformers' own function). Accepts PIL images, numpy arrays and tensors ([H, W, C] or
    [C, H, W], C in 1, 3, 4, or [H, W])."""
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            rgb = _uint8_tensor_to_rgb(image)
            if rgb is not None:
                return rgb
        image = image.cpu().numpy()  # RGBA (alpha compositing as transformers does it) and errors
    try:
        import PIL.Image
    except ImportError:  # pragma: no cover - Pillow is a dependency of transformers
        PIL = None
    if PIL is not None and isinstance(image, PIL.Image.Image):
        if image.mode == "RGB":
            return _from_numpy(np.asarray(image))
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            raise ValueError(f"ImageProcessor: image {index} has mode {image.mode!r} (16-bit or float); "
                             "convert it to 8-bit RGB first, e.g. image.convert('RGB')")
        return _from_numpy(np.ascontiguousarray(_pil_to_rgb(image)))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"ImageProcessor: image {index} is a {type(image).__name__}; pass PIL images, "
                        "numpy arrays or uint8 tensors")
    if image.dtype != np.uint8:
        raise ValueError(f"ImageProcessor: image {index} has dtype {image.dtype}; only uint8 arrays are "
                         "supported (16-bit and float images: convert to 8-bit RGB first)")
    # Channels-first and grayscale arrays become views (the CPU kernel reads a channels-first
    # image in place, the CUDA upload packs it); RGBA is composited below.
    rgb = _uint8_tensor_to_rgb(_from_numpy(np.ascontiguousarray(image)))
    if rgb is not None:
        return rgb
    if _channels_first(image.shape):
        image = np.moveaxis(image, 0, -1)  # channels first -> last
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"ImageProcessor: image {index} has shape {image.shape}; expected [H, W, C] or "
                         "[C, H, W] with C in 1, 3, 4")
    # 4 channels (1 and 3 were handled above): alpha composited onto white, as recent transformers does
    return _from_numpy(_composite_on_white(image))


def _channels_first(shape) -> bool:
    """Whether a 3D image shape is [C, H, W] rather than [H, W, C] (transformers' inference):
    dim 0 is 1, 3 or 4 channels and the last dim is not."""
    return len(shape) == 3 and shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)


def _uint8_tensor_to_rgb(image: torch.Tensor) -> Optional[torch.Tensor]:
    """A uint8 tensor as [H, W, 3] on its own device (a view where the layout allows; the op makes
    it contiguous there): channels-first [3, H, W] (what GPU decoders such as
    torchvision.io.decode_jpeg(device="cuda") return), [H, W, 3], and grayscale [H, W], [1, H, W],
    [H, W, 1] (expanded to three equal channels, as convert_to_rgb does). None for layouts the
    host path converts (RGBA) or rejects."""
    if image.dim() == 2:
        image = image[:, :, None]
    if image.dim() != 3:
        return None
    if _channels_first(image.shape):
        image = image.permute(1, 2, 0)
    if image.shape[2] == 3:
        return image
    if image.shape[2] == 1:
        return image.expand(-1, -1, 3)
    return None


def _is_4d(x) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4


def _frames_as_images(images, kind: str):
    """A 4D array or tensor (a video's frames, [T, H, W, C] or [T, C, H, W], as decord or torchcodec
    return them), alone or in a flat list, is that many images, as transformers' SigLIP processors
    read it (make_flat_list_of_images). transformers' OneVision and LLaVA-NeXT processors fail on one
    (an IndexError): a clear error here. Channels-first frames on the GPU are made channels-last in
    one copy for the whole video."""
    if _is_4d(images):
        flat = [images]
    elif isinstance(images, (list, tuple)) and not any(isinstance(x, (list, tuple)) for x in images):
        flat = list(images)
    else:
        return images
    if not any(_is_4d(x) for x in flat):
        return images
    if kind != "siglip":
        shape = next(tuple(x.shape) for x in flat if _is_4d(x))
        raise ValueError(f"ImageProcessor: a 4D input of shape {shape} is a batch of video frames, which "
                         f"transformers' {kind} image processor does not take; pass a list of images, or "
                         "frames to a SigLIP processor (ImageProcessor.from_hf of a SiglipImageProcessor)")
    out = []
    for x in flat:
        if not _is_4d(x):
            out.append(x)
            continue
        if isinstance(x, torch.Tensor) and x.is_cuda and x.dtype == torch.uint8 and _channels_first(x.shape[1:]):
            x = x.permute(0, 2, 3, 1).contiguous()
        out.extend(x)
    return out


def _channels_first_storage(im: torch.Tensor) -> torch.Tensor:
    """The contiguous [3, H, W] behind a channels-first view [H, W, 3], else the image itself."""
    if im.dim() == 3 and not im.is_contiguous() and im.permute(2, 0, 1).is_contiguous():
        return im.permute(2, 0, 1)
    return im


def _batch_channels_first(images: Sequence[torch.Tensor]) -> list:
    """Channels-first views (from _uint8_tensor_to_rgb) of equal shape on one device made [H, W, 3]
    contiguous together: one stack and one transposing copy for a whole video's frames, where the op
    would otherwise allocate and copy each frame on its own (a launch and ~10 us of host time per
    frame on CUDA). Other images are returned as they are."""
    groups: dict = {}
    for i, im in enumerate(images):
        if _channels_first_storage(im) is not im:
            groups.setdefault((tuple(im.shape), im.device), []).append(i)
    out = list(images)
    for members in groups.values():
        if len(members) < 2:
            continue
        hwc = torch.stack([images[i].permute(2, 0, 1) for i in members]).permute(0, 2, 3, 1).contiguous()
        for k, i in enumerate(members):
            out[i] = hwc[k]
    return out


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    # Read-only arrays (np.asarray of a PIL image) are fine: the op never writes its inputs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _is_bicubic(resample) -> bool:
    """PIL's Resampling.BICUBIC (3, or the int) or torchvision's InterpolationMode.BICUBIC ("bicubic")."""
    return str(getattr(resample, "value", resample)).lower() in ("3", "bicubic")


def _supported_settings(p, who: str) -> dict:
    """The settings of a transformers image/video processor that ours take (mean, std, rescale factor,
    square size), after checking the rest is what ours do: resize, rescale and normalize on, bicubic
    (PIL's Resampling or torchvision's InterpolationMode), no center crop smaller than the resize."""
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if getattr(p, flag, True) is False:
            raise ValueError(f"{who}: {flag}=False is not supported")
    if getattr(p, "do_center_crop", None) and _square_size(p.crop_size, "crop_size") != _square_size(p.size, "size"):
        raise ValueError(f"{who}: a center crop smaller than the resize is not supported")
    resample = getattr(p, "resample", 3)
    if not _is_bicubic(resample):
        raise ValueError(f"{who}: only bicubic resampling is supported, got {resample}")
    mean = list(np.broadcast_to(np.asarray(p.image_mean, dtype=np.float64), (3,)))
    std = list(np.broadcast_to(np.asarray(p.image_std, dtype=np.float64), (3,)))
    return dict(image_mean=mean, image_std=std, rescale_factor=p.rescale_factor, size=_square_size(p.size, "size"))


def _wrapped_attribute(self, name):
    """__getattr__ of our processors: an attribute the class does not have is the wrapped transformers
    processor's (from_hf keeps it), for what transformers' multimodal processors read off theirs."""
    hf = self.__dict__.get("_hf")
    if hf is None or name.startswith("__"):
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")
    return getattr(hf, name)


# upload="overlapped": the size of the pieces a call's images are staged and uploaded in. A piece's
# transfer runs while the host stages the next; 2 MiB keeps each transfer near PCIe's full rate
# (large transfers) and the pieces few (50 for 16 1080x1920 frames, each one cudaMemcpyAsync).
_UPLOAD_PIECE_BYTES = 2 << 20
_UPLOAD_MODES = ("pinned", "overlapped", "pageable")


def _upload_pieces(sizes: Sequence[int], piece_bytes: int) -> list:
    """(start, end) byte ranges of the staging buffer for images of `sizes` bytes placed back to
    back: each image cut into pieces of at most `piece_bytes`, no piece spanning two images (a piece
    is staged from one image's bytes)."""
    if piece_bytes < 1:
        raise ValueError(f"piece_bytes must be positive, got {piece_bytes}")
    pieces, lo = [], 0
    for size in sizes:
        pieces += [(lo + s, lo + min(s + piece_bytes, size)) for s in range(0, size, piece_bytes)]
        lo += size
    return pieces


class _PinnedStaging:
    """A pinned host buffer reused across calls: all images of a call are copied into it (torch's
    multi-threaded CPU copy) and uploaded asynchronously, in one transfer after the last image
    ("pinned") or piece by piece, each piece's transfer under the host's copy of the next
    ("overlapped"); the event of the last transfer guards the buffer against the next call
    overwriting it too early."""

    def __init__(self):
        self.buffer: Optional[torch.Tensor] = None
        self.event = None
        # One processor may serve several threads (a server's request threads): the buffer is
        # shared, so filling it and queuing its transfer is one critical section.
        self.lock = threading.Lock()

    def __getstate__(self):  # a processor pickled into DataLoader workers starts with a fresh buffer
        return {}

    def __setstate__(self, state):
        self.__init__()

    def upload(self, arrays: Sequence[torch.Tensor], device: torch.device, overlapped: bool = False) -> list:
        bounds = list(itertools.accumulate((a.numel() for a in arrays), initial=0))
        total = bounds[-1]
        with self.lock:
            if self.event is not None:
                self.event.synchronize()  # the previous upload has finished reading the buffer
            if self.buffer is None or self.buffer.numel() < total:
                self.buffer = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=True)
            # Channels-first images (views from _uint8_tensor_to_rgb) are staged as they are stored and
            # made channels-last on the GPU: the host's transposing copy took ~6 ms per 1080x1920.
            stored = [_channels_first_storage(a) for a in arrays]
            flat = [st.reshape(-1) for st in stored]
            if overlapped:
                on_device = torch.empty(max(total, 1), dtype=torch.uint8, device=device)
                for a, lo, hi in zip(flat, bounds, bounds[1:]):
                    for s, e in _upload_pieces([hi - lo], _UPLOAD_PIECE_BYTES):
                        self.buffer[lo + s:lo + e].copy_(a[s:e])
                        on_device[lo + s:lo + e].copy_(self.buffer[lo + s:lo + e], non_blocking=True)
            else:
                for a, lo, hi in zip(flat, bounds, bounds[1:]):
                    self.buffer[lo:hi].copy_(a)
                on_device = self.buffer[:total].to(device, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(device))
        return [on_device[lo:hi].view(st.shape).permute(1, 2, 0) if st is not a else on_device[lo:hi].view(a.shape)
                for a, st, lo, hi in zip(arrays, stored, bounds, bounds[1:])]


class ImageProcessor:
    """The image processors of SigLIP, LLaVA-NeXT and LLaVA-OneVision, on CPU or CUDA.

    upload (CUDA only): "pinned" (the default) stages all of a call's images in one reused pinned
    buffer and uploads them in one asynchronous transfer; "overlapped" stages and uploads them in
    2 MiB pieces, each piece's transfer running while the host stages the next (not yet timed on a
    GPU: the benchmark's `ours_overlapped`); "pageable" copies each decoded image to the device on
    its own. On the H100 (404b09f) pinned took 0.80 ms vs 1.03 ms for a 1080x1920 image and 4.0 ms
    vs 8.8 ms for 16 frames; the benchmark keeps timing them all (`ours_pageable`).

    Where a call tiles: its `device=` argument, else the constructor's, else the GPU its images are
    on when all of them are uint8 tensors on one GPU (a GPU decoder's output), else the CPU."""

    def __init__(self, kind: str, *, image_mean: Sequence[float], image_std: Sequence[float],
                 rescale_factor: float = 1 / 255, size: int = planning.TILE,
                 grid_pinpoints: Optional[Sequence[Sequence[int]]] = None, do_pad: bool = True,
                 device: Union[str, torch.device, None] = None, upload: str = "pinned"):
        if kind not in KINDS:
            raise ValueError(f"ImageProcessor: kind must be one of {KINDS}, got {kind!r}")
        if upload not in _UPLOAD_MODES:
            raise ValueError(f"ImageProcessor: upload must be one of {_UPLOAD_MODES}, got {upload!r}")
        self.upload = upload
        self._staging = _PinnedStaging()
        self.kind = kind
        self.size = int(size)
        self.grid_pinpoints = [tuple(p) for p in (grid_pinpoints or planning.ONEVISION_PINPOINTS)]
        self.do_pad = do_pad
        self.device = torch.device(device) if device is not None else None
        self.table = normalization_table(image_mean, image_std, rescale_factor)
        self._device_tables: dict = {}
        # OneVision pads multi-image samples to a square of int(255 * mean) (pad_to_square).
        self.pad_color = tuple(int(x * 255) for x in image_mean)

    @classmethod
    def from_hf(cls, hf_image_processor, device: Union[str, torch.device, None] = None,
                upload: str = "pinned") -> "ImageProcessor":
        """Reads the settings of a transformers image processor (PIL or torchvision backend)."""
        from .transformers_compat import require_supported
        require_supported("ImageProcessor.from_hf")
        p = hf_image_processor
        kind = _kind_of(p)
        settings = _supported_settings(p, "ImageProcessor.from_hf")
        grid = getattr(p, "image_grid_pinpoints", None) if kind != "siglip" else None
        ours = cls(kind, **settings, grid_pinpoints=grid, do_pad=bool(getattr(p, "do_pad", True)), device=device,
                   upload=upload)
        # Kept for what a transformers processor reads off its image processor besides calling it
        # (fetch_images, image_grid_pinpoints, model_input_names, ...: see __getattr__), so that
        # `processor.image_processor = ImageProcessor.from_hf(processor.image_processor)` works.
        ours._hf = p
        return ours

    __getattr__ = _wrapped_attribute

    def __getstate__(self):  # device copies of the table stay behind (DataLoader workers)
        state = dict(self.__dict__)
        state["_device_tables"] = {}
        return state

    def _table_on(self, device: torch.device) -> torch.Tensor:
        """The normalization table on `device`, copied there once: a pageable host-to-device copy
        per call would also wait for the image upload queued just before it."""
        cached = self._device_tables.get(device)
        if cached is None:
            cached = self._device_tables[device] = self.table.to(device)
        return cached

    def __call__(self, images, return_tensors: Optional[str] = "pt", device=None, normalize: bool = True, **kwargs):
        """normalize=False (ours, not transformers'): pixel_values are the uint8 tiles [..., S, S, 3]
        themselves, for a patch embedding that folds the normalization in (interleave.ops.patch_embed)."""
        with nvtx.range("image_processor"):
            out = self._process(images, return_tensors, device, normalize, **kwargs)
        if return_tensors is None:  # as transformers' processors: per-image numpy arrays, sizes as tuples
            for key, value in list(out.items()):
                if key == "pixel_values":
                    out[key] = [v.cpu().numpy() for v in value]
                elif key == "image_sizes":
                    out[key] = [tuple(s) for s in value.tolist()]
        return out

    # Per-call settings transformers' image processors take (and its processors pass on). One that
    # is None or equals this processor's setting changes nothing; another value is an error naming it
    # (the settings are read once, by from_hf).
    _ALWAYS = {"do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
               "data_format": "channels_first"}
    _SETTINGS = ("size", "crop_size", "do_center_crop", "rescale_factor", "image_mean", "image_std", "do_pad",
                 "image_grid_pinpoints", "vision_aspect_ratio")

    def _check_call_settings(self, kwargs: dict) -> None:
        for key, value in kwargs.items():
            if value is None or key == "input_data_format":  # the layout of each input is read off its shape
                continue
            if key == "resample":
                expected, same = "bicubic", _is_bicubic(value)
            elif key in self._ALWAYS:
                expected = self._ALWAYS[key]
                # enums by value (transformers' ChannelDimension.FIRST is "channels_first")
                same = str(getattr(value, "value", value)).lower() == str(expected).lower()
            elif key in self._SETTINGS:
                hf = self.__dict__.get("_hf")
                expected = getattr(hf, key, None) if hf is not None else None
                same = hf is not None and _same_setting(value, expected)
            else:
                raise TypeError(f"ImageProcessor: unsupported argument {key}={value!r}")
            if not same:
                raise ValueError(f"ImageProcessor: per-call {key}={value!r} differs from this processor's setting "
                                 f"({expected!r}); make an ImageProcessor.from_hf of a processor with that setting")

    def _process(self, images, return_tensors, device, normalize=True, **kwargs):
        from transformers.image_processing_utils import BatchFeature

        self._check_call_settings(kwargs)
        images = _frames_as_images(images, self.kind)
        # Nesting as transformers reads it: a list of lists is a batch of multi-image samples.
        if isinstance(images, (list, tuple)) and images and isinstance(images[0], (list, tuple)):
            samples = [list(s) for s in images if s]
        elif isinstance(images, (list, tuple)):
            samples = [[im] for im in images]
        else:
            samples = [[images]]
        batch_num_images = [len(s) for s in samples]
        decoded = [to_rgb_uint8(im, i) for i, im in enumerate(x for s in samples for x in s)]
        if device is not None:
            device = torch.device(device)
        elif self.device is not None:
            device = self.device
        else:  # where the images are when all are on one GPU (tiled there, as transformers' torchvision
            # processor does with device=None), else the CPU
            where = {d.device for d in decoded}
            device = where.pop() if len(where) == 1 and decoded[0].is_cuda else torch.device("cpu")
        if device.type == "cuda" and self.upload != "pageable" and all(not d.is_cuda for d in decoded):
            flat = self._staging.upload(decoded, device, overlapped=self.upload == "overlapped")
        else:
            flat = [d.to(device) for d in decoded]
        if device.type == "cuda":
            flat = _batch_channels_first(flat)
        table = self._table_on(device) if normalize else None

        if self.kind == "siglip":
            values = anyres_tiles(flat, "llava", tile=self.size, normalize=table).tiles
            return BatchFeature(data={"pixel_values": values}, tensor_type=return_tensors)

        # OneVision tiles only single-image samples; multi-image samples are padded to a square.
        single = [n == 1 for n in batch_num_images for _ in range(n)] if self.kind == "onevision" \
            else [True] * len(flat)
        modes = ["anyres" if s else "pad" for s in single]
        # One call for the whole batch. With do_pad the op writes transformers' zero-padded
        # [images, max patches, ...] layout itself: stacking per-image results copied every pixel
        # value again (4 OneVision 1080x1920 images: ~48 ms of which the tiling was ~11 ms on this
        # project's CPU, most of the rest page faults and the copy).
        result = anyres_tiles(flat, modes, pinpoints=self.grid_pinpoints, tile=self.size,
                              pad_color=self.pad_color, normalize=table, batch=self.do_pad)
        image_sizes = [list(im.shape[:2]) for im in flat]
        if self.do_pad:
            values = result.tiles
        else:
            values = [result.tiles[a:b] for a, b in zip(result.tile_offsets, result.tile_offsets[1:])]
        data = {"pixel_values": values, "image_sizes": torch.tensor(image_sizes, dtype=torch.int64)}
        if self.kind == "onevision":
            data["batch_num_images"] = batch_num_images
        return BatchFeature(data=data, tensor_type=return_tensors)


_NO_FRAME_SAMPLING = "do_sample_frames=True is not supported; sample the frames first (interleave.plan.sample_frames)"


class VideoProcessor:
    """A drop-in for transformers' OneVision video processor (`LlavaOnevisionVideoProcessor`: every
    frame squashed to size x size, rescaled, normalized): all frames of all videos of a call go
    through one `anyres_tiles` call, as ImageProcessor does for images.

    Not bit-equal to transformers: its video processors resize with torchvision, ours with Pillow's
    arithmetic (what the image processors and our model use), at most 2 levels apart and under 1% of
    values off by more than half a level (tests/test_hf_processor.py). Frames are not sampled here
    (transformers' `do_sample_frames` is off by default; interleave.plan.sample_frames picks them).

        processor.video_processor = VideoProcessor.from_hf(processor.video_processor)
    """

    def __init__(self, *, image_mean: Sequence[float], image_std: Sequence[float], rescale_factor: float = 1 / 255,
                 size: int = planning.TILE, device: Union[str, torch.device, None] = None, upload: str = "pinned"):
        self._frames = ImageProcessor("siglip", image_mean=image_mean, image_std=image_std,
                                      rescale_factor=rescale_factor, size=size, device=device, upload=upload)

    @classmethod
    def from_hf(cls, hf_video_processor, device: Union[str, torch.device, None] = None,
                upload: str = "pinned") -> "VideoProcessor":
        from .transformers_compat import require_supported
        require_supported("VideoProcessor.from_hf")
        p = hf_video_processor
        if getattr(p, "do_sample_frames", False):
            raise ValueError(f"VideoProcessor.from_hf: {_NO_FRAME_SAMPLING}")
        ours = cls(**_supported_settings(p, "VideoProcessor.from_hf"), device=device, upload=upload)
        ours._hf = p  # what a multimodal processor reads off it besides calling it (see __getattr__)
        ours._frames._hf = p  # per-call settings compare against the video processor's
        return ours

    __getattr__ = _wrapped_attribute

    def __call__(self, videos, return_tensors: Optional[str] = "pt", device=None, **kwargs):
        from transformers.image_processing_utils import BatchFeature
        from transformers.video_utils import make_batched_videos

        if kwargs.pop("do_sample_frames", None):
            raise ValueError(f"VideoProcessor: {_NO_FRAME_SAMPLING}")
        for key in ("num_frames", "fps", "video_metadata", "return_metadata"):  # frame sampling's, unused here
            kwargs.pop(key, None)
        videos = make_batched_videos(videos)  # a list of [T, H, W, C] arrays or [T, C, H, W] tensors
        counts = [len(v) for v in videos]
        with nvtx.range("video_processor"):
            frames = self._frames(list(videos), return_tensors="pt", device=device, **kwargs)["pixel_values"]
        per_video = list(frames.split(counts))
        if return_tensors is None:  # as transformers: a list of [T, 3, S, S] tensors
            return BatchFeature(data={"pixel_values_videos": per_video})
        if len(set(counts)) > 1:
            raise ValueError(f"VideoProcessor: videos of {sorted(set(counts))} frames cannot be stacked into one "
                             "tensor; pass return_tensors=None for a list")
        return BatchFeature(data={"pixel_values_videos": torch.stack(per_video)}, tensor_type=return_tensors)
