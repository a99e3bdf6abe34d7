"""pwatermark: LAION-5B's watermark classifier (LAION-5B-WatermarkDetection).

A timm backbone (LAION: `efficientnet_b3a`) whose classifier is replaced by LAION's head
Linear(F, 625) - ReLU - Dropout(0.3) - Linear(625, 256) - ReLU - Linear(256, 2), on images resized
to 256x256 with ImageNet normalisation; pwatermark is the softmax probability of class 0. The
architecture is configuration, so the demo ships a much smaller timm backbone with the same head
and loads it through this same code.

Weights: the released state dict (`watermark_model_v1.pt`), or a checkpoint of LAION's training
script (LAION-AI/watermark-detection, `{"weights": state dict, "opt_state": ..., "scheduler_state": ...}`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config.models import WatermarkModelConfig
from .weights import load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def laion_head(num_features: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(num_features, 625),
        nn.ReLU(),
        nn.Dropout(p=0.3),
        nn.Linear(625, 256),
        nn.ReLU(),
        nn.Linear(256, 2),
    )


def build_watermark_model(arch: str) -> nn.Module:
    """A timm `arch` with LAION's head in place of its classifier (random weights)."""
    import warnings

    import timm

    with warnings.catch_warnings():  # timm maps LAION's name efficientnet_b3a to efficientnet_b3: same net
        warnings.filterwarnings("ignore", message="Mapping deprecated model name")
        model = timm.create_model(arch, pretrained=False, num_classes=2)
    attr = model.pretrained_cfg.get("classifier", "classifier")
    if isinstance(attr, (list, tuple)):
        attr = attr[0]
    parent = model
    *path, last = attr.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, laion_head(model.num_features))
    return model


def watermark_transform(image_size: int = 256) -> Callable:
    """LAION's preprocessing: Resize((S, S)) (aspect not kept), ToTensor, ImageNet Normalize."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Lambda(lambda im: im.convert("RGB")),
            T.Resize((image_size, image_size)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


@dataclass
class WatermarkScorer:
    model: nn.Module
    preprocess: Callable  # PIL.Image -> tensor [3, S, S]
    device: str = "cpu"
    dtype: torch.dtype = torch.float32

    @torch.inference_mode()
    def score(self, batch: torch.Tensor) -> np.ndarray:
        """[N, 3, S, S] preprocessed images -> pwatermark [N] (float32)."""
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        if batch.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        logits = self.model(batch.to(self.device, dtype=self.dtype))
        return logits.float().softmax(dim=-1)[:, 0].cpu().numpy().astype(np.float32)


def watermark_state_dict(obj: dict, expected: set[str], name: str = "watermark weights") -> dict:
    """The model's state dict out of what a watermark weights file holds: the state dict itself, or
    LAION's training checkpoint with it under `weights`. Anything else is refused, naming both."""
    if set(obj) == expected:
        return obj
    inner = obj.get("weights")
    if isinstance(inner, dict):
        inner = {k.removeprefix("module."): v for k, v in inner.items()}
        if set(inner) == expected:
            return inner
    missing = sorted(expected - set(obj))[:3]
    raise ValueError(
        f"{name}: neither the model's state dict nor a training checkpoint with it under 'weights' "
        f"(keys {sorted(map(str, obj))[:5]}...; e.g. missing {missing})"
    )


def load_watermark(
    cfg: WatermarkModelConfig, device: str = "cpu", half: bool | None = None, cache=None
) -> WatermarkScorer:
    """The watermark classifier of `cfg` on `device` (fp16 on CUDA unless `half=False`)."""
    model = build_watermark_model(cfg.arch)
    if not cfg.weights:
        raise ValueError("models.watermark.weights is required")
    sd = watermark_state_dict(load_state_dict(cfg.weights, cfg.sha256, cache), set(model.state_dict()), cfg.weights)
    model.load_state_dict(sd, strict=True)
    half = str(device).startswith("cuda") if half is None else half
    dtype = torch.float16 if half else torch.float32
    model = model.to(device, dtype=dtype).eval()
    return WatermarkScorer(model, watermark_transform(cfg.image_size), str(device), dtype)
