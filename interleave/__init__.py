"""interleave: fused kernels for LLaVA-NeXT-Interleave-style multimodal models.

    import interleave
    embeds = interleave.ops.merge_tokens(input_ids, embed_weight, visual, image_token_id)
    model = interleave.InterleaveModel.from_pretrained(path)      # a local checkpoint folder
    print(interleave.generate(model, "<image>Describe the image.", [image]))

Importing does not initialize CUDA. If the compiled extension is missing or was built for another
torch, ops run their PyTorch references and one ExtensionWarning says why.
"""
from . import _extension, ops, reference
from ._extension import ExtensionWarning
from .generation import generate
from .model import InterleaveModel, Video

__version__ = "0.1.0"

__all__ = ["ops", "reference", "ExtensionWarning", "InterleaveModel", "Video", "generate", "__version__"]
