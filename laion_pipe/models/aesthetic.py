"""Aesthetic score: LAION's aesthetic predictors, on the L2-normalised CLIP image embedding.

Three layouts LAION published, recognised from the weights file's keys:

- the improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor,
  `sac+logos+ava1-l14-linearMSE.pth`): an MLP without activations, `layers.{0,2,4,6,7}`, that
  regresses a mean human rating, about 1..10; LAION-Aesthetics v2 "5+" (Stable Diffusion v1's data)
  kept images scoring >= 5;
- its ReLU variant (`ava+logos-l14-reluMSE.pth`): ReLU after each hidden layer, `layers.{0,3,6,9,11}`;
- LAION's first, linear predictor (LAION-AI/aesthetic-predictor, `sa_0_4_vit_l_14_linear.pth`,
  `sa_0_4_vit_b_32_linear.pth`): a bare nn.Linear(D, 1), keys `weight` / `bias`, used for
  LAION-Aesthetics v1.

The demo predictor has the improved predictor's layout on the demo CLIP's embedding and was
trained on a synthetic quality proxy (see demo/README.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config.models import AestheticModelConfig
from .clip import ClipScorer
from .weights import load_state_dict

EXPECTED_LAYOUTS = (
    "the improved aesthetic predictor (layers.0/2/4/6/7 weight+bias), its ReLU variant (layers.0/3/6/9/11) "
    "or LAION's linear predictor (weight, bias)"
)


class AestheticMLP(nn.Module):
    """LAION's MLP (simple_inference.py), parameter names `layers.{0,2,4,6,7}` as in their file.
    The dropouts (and the absence of activations) are theirs. `relu=True` is the ReLU variant
    (avaclipmlp_inf_wds-relu.py): a ReLU after each hidden Linear, `layers.{0,3,6,9,11}`."""

    def __init__(self, input_size: int = 768, relu: bool = False):
        super().__init__()
        act = [nn.ReLU()] if relu else []
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), *act,
            nn.Dropout(0.2),
            nn.Linear(1024, 128), *act,
            nn.Dropout(0.2),
            nn.Linear(128, 64), *act,
            nn.Dropout(0.1),
            nn.Linear(64, 16), *act,
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


class LinearAesthetic(nn.Module):
    """LAION-Aesthetics v1's predictor: nn.Linear(D, 1) on the normalised embedding."""

    def __init__(self, input_size: int):
        super().__init__()
        self.linear = nn.Linear(input_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


_LAYOUTS = {
    frozenset(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")): False,
    frozenset(f"layers.{i}.{p}" for i in (0, 3, 6, 9, 11) for p in ("weight", "bias")): True,
}


def predictor_from_state_dict(sd: dict[str, torch.Tensor], name: str = "aesthetic predictor") -> nn.Module:
    """The predictor whose layout the keys describe, with the weights loaded (strictly)."""
    sd = {k: v.float() for k, v in sd.items()}
    keys = frozenset(sd)
    if keys == {"weight", "bias"} and sd["weight"].ndim == 2 and sd["weight"].shape[0] == 1:
        model: nn.Module = LinearAesthetic(int(sd["weight"].shape[1]))
        model.linear.load_state_dict(sd, strict=True)
        return model.eval()
    if keys not in _LAYOUTS:
        raise ValueError(f"{name}: unknown weight layout (keys {sorted(keys)[:6]}); expected {EXPECTED_LAYOUTS}")
    model = AestheticMLP(int(sd["layers.0.weight"].shape[1]), relu=_LAYOUTS[keys])
    model.load_state_dict(sd, strict=True)
    return model.eval()


def input_dim(model: nn.Module) -> int:
    return model.linear.in_features if isinstance(model, LinearAesthetic) else model.layers[0].in_features


@dataclass
class AestheticScorer:
    model: nn.Module  # AestheticMLP or LinearAesthetic
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


def load_aesthetic(cfg: AestheticModelConfig, clip_for_it: ClipScorer, cache=None) -> AestheticScorer:
    """The aesthetic predictor of `cfg`, for embeddings of `clip_for_it` (cfg.clip's model)."""
    if not cfg.weights:
        raise ValueError("models.aesthetic.weights is required")
    model = predictor_from_state_dict(load_state_dict(cfg.weights, cfg.sha256, cache), cfg.weights)
    dim = input_dim(model)
    if dim != clip_for_it.embed_dim:
        raise ValueError(
            f"aesthetic predictor {cfg.weights} expects {dim}-d embeddings but CLIP {clip_for_it.name} gives "
            f"{clip_for_it.embed_dim}-d: set models.aesthetic.clip to the CLIP it was trained on"
        )
    return AestheticScorer(model.to(clip_for_it.device).eval(), clip_for_it.device)
