"""Aesthetic score: LAION's improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor).

An MLP on the L2-normalised CLIP image embedding (OpenAI ViT-L/14 for the real weights) that
regresses a mean human rating, about 1..10; LAION-Aesthetics v2 "5+" (Stable Diffusion v1's data)
kept images scoring >= 5. The demo predictor has the same layout on the demo CLIP's embedding and
was trained on a synthetic quality proxy (see demo/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config.models import AestheticModelConfig
from .clip import ClipScorer
from .weights import load_state_dict


class AestheticMLP(nn.Module):
    """LAION's MLP (simple_inference.py), parameter names `layers.{0,2,4,6,7}` as in their file.
    The dropouts (and the absence of activations) are theirs."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


@dataclass
class AestheticScorer:
    model: AestheticMLP
    device: str = "cpu"

    @torch.inference_mode()
    def score(self, image_emb) -> np.ndarray:
        """[N, D] image embeddings -> aesthetic scores [N] (float32). Embeddings are L2-normalised
        again here because the predictor was trained on normalised ones."""
        x = torch.as_tensor(image_emb, dtype=torch.float32).to(self.device)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        x = torch.nn.functional.normalize(x, dim=-1)
        return self.model(x).float().cpu().numpy().astype(np.float32)


def load_aesthetic(cfg: AestheticModelConfig, clip_for_it: ClipScorer) -> AestheticScorer:
    """The aesthetic predictor of `cfg`, for embeddings of `clip_for_it` (cfg.clip's model)."""
    if not cfg.weights:
        raise ValueError("models.aesthetic.weights is required")
    sd = {k: v.float() for k, v in load_state_dict(cfg.weights).items()}
    if "layers.0.weight" not in sd:
        raise ValueError(f"{cfg.weights}: not an improved-aesthetic-predictor state dict (no layers.0.weight)")
    dim = int(sd["layers.0.weight"].shape[1])
    if dim != clip_for_it.embed_dim:
        raise ValueError(
            f"aesthetic predictor {cfg.weights} expects {dim}-d embeddings but CLIP {clip_for_it.name} gives "
            f"{clip_for_it.embed_dim}-d: set models.aesthetic.clip to the CLIP it was trained on"
        )
    model = AestheticMLP(dim)
    model.load_state_dict(sd, strict=True)
    return AestheticScorer(model.to(clip_for_it.device).eval(), clip_for_it.device)
