"""Triton kernels. Imported lazily (only when a CUDA tensor, or the Triton interpreter, needs one),
so `import interleave` neither imports triton nor touches CUDA."""
