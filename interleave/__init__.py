"""interleave: fused kernels for LLaVA-NeXT-Interleave-style multimodal models.

    import interleave
    embeds = interleave.ops.merge_tokens(input_ids, embed_weight, visual, image_token_id)

Importing does not initialize CUDA. If the compiled extension is missing or was built for another
torch, ops run their PyTorch references and one ExtensionWarning says why.
"""
from . import _extension, ops, reference
from ._extension import ExtensionWarning

__version__ = "0.1.0"

__all__ = ["ops", "reference", "ExtensionWarning", "__version__"]
