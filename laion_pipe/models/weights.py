"""Where weight files come from: a local path, or an fsspec URL fetched once into a local cache.

Why a cache and not streaming: torch and open_clip load from a local path, and every Dask task
of the score stage loads the same few files, so each worker machine should download them once.
The cache key is the URL, the file keeps its name (open_clip and timm look at the suffix).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .. import fsio


def cache_dir() -> Path:
    """`$LAION_PIPE_CACHE/models`, default `~/.cache/laion_pipe/models`."""
    root = os.environ.get("LAION_PIPE_CACHE") or Path.home() / ".cache" / "laion_pipe"
    return Path(root) / "models"


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def local_weights(location: str) -> str:
    """A local path for `location` (a path, `file://` path, or fsspec URL such as https:// or s3://),
    downloading a URL into the cache on first use (atomically, so concurrent workers never load a
    half-written file)."""
    if location.startswith("file://"):
        location = location[len("file://"):]
    if not is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return str(path)
    name = location.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "weights"
    target = cache_dir() / hashlib.sha256(location.encode()).hexdigest()[:16] / name
    if not target.is_file():
        fs, p = fsio.fs_and_path(location)
        with fs.open(p, "rb") as src, fsio.atomic_open(str(target), "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    return str(target)


def load_state_dict(location: str) -> dict:
    """A tensor state dict from a .safetensors or torch file (loaded with weights_only=True: a
    weights file must never be able to run code); a {"state_dict": ...} wrapper is unwrapped."""
    import torch

    path = local_weights(location)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickled nn.Module, or not a torch file at all
        raise ValueError(f"{location}: not a tensor state dict loadable with weights_only=True ({e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{location}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}
