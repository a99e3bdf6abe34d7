"""Device and precision choice for the model stages.

"auto" means: the GPU when the worker has one (Dask GPU workers are started with a GPU visible),
else the CPU. Half precision on CUDA (LAION scored in fp16 on GPUs), fp32 on CPU where fp16
matmuls are slow or missing.
"""
from __future__ import annotations


def resolve_device(spec: str = "auto") -> str:
    """'auto' -> 'cuda' if available, else 'cpu'; other specs ('cpu', 'cuda', 'cuda:1') pass through
    after checking they exist."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {spec!r} requested but CUDA is not available on this worker")
    return spec


def default_precision(device: str) -> str:
    """open_clip precision name for a device: 'fp16' on CUDA, 'fp32' elsewhere."""
    return "fp16" if str(device).startswith("cuda") else "fp32"


def torch_dtype(precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
