"""CLIP through open_clip, from configuration: the image-text similarity LAION filtered on.

One loader for every source open_clip knows (a built-in name with a pretrained tag or a weights
file, `hf-hub:`, `local-dir:`) plus a custom model-config JSON, which is how the shipped demo CLIP
loads: the demo and the real LAION-5B models go through the same code path.

Embeddings come back L2-normalised in float32 on the CPU whatever the device and precision, so the
similarity of an image and its caption is a plain dot product and the numbers written to parquet
do not depend on where they were computed (beyond fp16 rounding on GPUs).
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config.models import ClipModelConfig
from .devices import default_precision, torch_dtype
from .weights import is_url, local_weights

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")
_register_lock = threading.Lock()


def _register_model_config(path: str) -> str:
    """Register a custom open_clip model-config JSON and return the name open_clip knows it by
    (the file's stem, open_clip's own convention for its config folder)."""
    p = Path(path).expanduser().resolve()
    try:
        cfg = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"CLIP model config {p}: cannot read JSON ({e})") from e
    if "model_cfg" in cfg:
        raise ValueError(
            f"{p} is an open_clip_config.json (hub layout): use model: 'local-dir:{p.parent}' instead"
        )
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"CLIP model config {p}: missing keys {missing}")
    import open_clip

    with _register_lock:
        if open_clip.get_model_config(p.stem) != cfg:
            open_clip.add_model_config(p)
    return p.stem


def _is_config_path(model: str) -> bool:
    return model.endswith(".json") or (os.sep in model and Path(model).is_file())


def _resolve_pretrained(pretrained: str | None) -> str | None:
    """A tag stays a tag; a path or URL becomes a local file path."""
    if not pretrained:
        return None
    if is_url(pretrained) or pretrained.startswith("file://") or pretrained.endswith(_WEIGHT_SUFFIXES):
        return local_weights(pretrained)
    if os.sep in pretrained or os.path.exists(pretrained):
        return local_weights(pretrained)
    return pretrained


@dataclass
class ClipScorer:
    """A loaded CLIP: its own preprocessing, normalised encoders, and the cosine LAION thresholds."""

    model: torch.nn.Module
    preprocess: Callable  # PIL.Image -> tensor [3, H, W]: the model's own eval transform
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    device: str = "cpu"
    precision: str = "fp32"
    name: str = ""
    _embed_dim: int | None = field(default=None, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.precision)

    @property
    def embed_dim(self) -> int:
        if self._embed_dim is None:
            self._embed_dim = int(self.encode_texts([""]).shape[1])
        return self._embed_dim

    @torch.no_grad()
    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] preprocessed images -> [N, D] L2-normalised float32 (CPU)."""
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        feats = self.model.encode_image(batch.to(self.device, dtype=self.dtype))
        return F.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Captions -> [N, D] L2-normalised float32 (CPU). Texts longer than the model's context
        are truncated by its tokenizer, as LAION's scoring did."""
        texts = list(texts)
        if not texts:
            return torch.empty((0, self.embed_dim), dtype=torch.float32)
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out)

    @staticmethod
    def similarity(image_emb, text_emb) -> np.ndarray:
        """Row-wise cosine similarity of paired normalised embeddings: LAION's `similarity`."""
        a = torch.as_tensor(image_emb, dtype=torch.float32)
        b = torch.as_tensor(text_emb, dtype=torch.float32)
        if a.shape != b.shape:
            raise ValueError(f"paired embeddings must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        return (a * b).sum(dim=-1).numpy()


def load_clip(cfg: ClipModelConfig, device: str = "cpu", precision: str | None = None) -> ClipScorer:
    """Build a ClipScorer from configuration. `precision` defaults to fp16 on CUDA, fp32 elsewhere."""
    import open_clip

    precision = precision or default_precision(device)
    name = _register_model_config(cfg.model) if _is_config_path(cfg.model) else cfg.model
    pretrained = None if name.startswith(("hf-hub:", "local-dir:")) else _resolve_pretrained(cfg.pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, precision=precision
    )
    model.eval()
    return ClipScorer(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        device=str(device),
        precision=precision,
        name=name,
    )


_cache: dict[tuple, ClipScorer] = {}
_cache_lock = threading.Lock()


def cached_clip(cfg: ClipModelConfig, device: str = "cpu", precision: str | None = None) -> ClipScorer:
    """`load_clip`, once per process and configuration: every score task on a Dask worker shares
    the loaded model instead of reading hundreds of MB of weights per partition."""
    key = (cfg.model, cfg.pretrained, str(device), precision or default_precision(device))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_clip(cfg, device, precision)
        return _cache[key]
