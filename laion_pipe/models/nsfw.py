"""punsafe: the probability that an image is unsafe, from its CLIP image embedding.

Two methods, as LAION used them:

- `mlp`: LAION's CLIP-based-NSFW-Detector, a small MLP on the image embedding. LAION published
  it in several layouts, all recognised here from the weights file itself so that one config key
  (`weights`) picks the model:
  - the autokeras zips of its main branch (`clip_autokeras_binary_nsfw.zip` for ViT-L/14, which
    LAION-5B's punsafe came from, and `clip_autokeras_nsfw_b32.zip`), read without TensorFlow by
    `keras_nsfw` (also a safetensors file converted from one by `python -m laion_pipe.models.keras_nsfw`);
  - their PyTorch ports (`norm.*` + `linear_1..n`, ReLU between layers, sigmoid output), which
    leave out the zips' categorical lookup of a few dimensions (see keras_nsfw);
  - the ViT-H/14 detector (`layers.*`, trained by regression, output clipped to [0, 1]).
  The demo head uses the ports' layout on the demo CLIP's 64-d embedding.
- `zeroshot`: LAION-400M's method, which needs no extra weights: compare the image embedding with
  the CLIP text embeddings of neutral and unsafe category prompts, softmax over 100 x cosine, and
  call the probability mass that falls on unsafe prompts punsafe. `NsfwScorer.tags` also gives
  LAION-400M's three-way tag (UNLIKELY / UNSURE / NSFW from the top-2 categories).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config.models import NsfwModelConfig
from .clip import ClipScorer
from .keras_nsfw import LOOKUP_META_KEY, KerasNsfwHead, head_from_spec, read_keras_nsfw_zip, spec_from_converted
from .weights import load_state_dict, local_weights

EXPECTED_LAYOUTS = (
    "LAION's autokeras zip (clip_autokeras_binary_nsfw.zip / clip_autokeras_nsfw_b32.zip), a safetensors file "
    "converted from one, a PyTorch port (norm.mean, norm.variance, linear_1..n.weight/bias) or the H14 detector "
    "(layers.0 .. layers.16 weight/bias)"
)


class Normalization(nn.Module):
    """Keras' Normalization layer as LAION ported it: (x - mean) / (sqrt(var) + 1e-10)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.variance.sqrt() + 1e-10)


class LaionNsfwHead(nn.Module):
    """LAION's ported autokeras heads (NSFWModel_B32 / NSFWModel_L14): normalisation, linear layers
    with ReLU between them, sigmoid out. `sizes` = [in, hidden..., 1]; B/32 is [512, 32, 32, 1],
    L/14 is [768, 64, 512, 256, 1]. Parameter names match LAION's files."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.norm = Normalization(sizes[0])
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            setattr(self, f"linear_{i}", nn.Linear(a, b))
        self.n_linear = len(sizes) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        for i in range(1, self.n_linear + 1):
            x = getattr(self, f"linear_{i}")(x)
            if i < self.n_linear:
                x = torch.relu(x)
        return torch.sigmoid(x).squeeze(-1)


class H14NsfwDetector(nn.Module):
    """LAION's H14_NSFW_Detector (h14_nsfw_model.py): regression MLP, no output activation."""

    def __init__(self, input_size: int = 1024):
        super().__init__()
        dims = [input_size, 1024, 2048, 1024, 256, 128, 16]
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            mods += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.2)]
        mods += [nn.Linear(128, 16), nn.Linear(16, 1)]
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).clamp(0, 1).squeeze(-1)


def head_from_state_dict(sd: dict[str, torch.Tensor]) -> nn.Module:
    """Build the head whose layout the weights describe, and load them (strictly)."""
    if "norm.mean" in sd:
        n = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"linear_(\d+)\.weight", k)))
        if not n or n != list(range(1, len(n) + 1)):
            raise ValueError("NSFW head: expected linear_1..linear_n weights")
        sizes = [sd["linear_1.weight"].shape[1]] + [sd[f"linear_{i}.weight"].shape[0] for i in n]
        head: nn.Module = LaionNsfwHead(sizes)
    elif "layers.0.weight" in sd:
        head = H14NsfwDetector(sd["layers.0.weight"].shape[1])
    else:
        raise ValueError(f"NSFW head: unknown weight layout (keys {sorted(sd)[:5]}...); expected {EXPECTED_LAYOUTS}")
    head.load_state_dict(sd, strict=True)
    return head.eval()


def head_from_file(location: str, sha256: str | None = None, cache=None) -> nn.Module:
    """The NSFW head a weights file holds, whichever of LAION's layouts it is in."""
    import zipfile

    path = local_weights(location, sha256, cache)
    if zipfile.is_zipfile(path):  # a Keras SavedModel zip, or a torch file (torch.save writes zips too)
        with zipfile.ZipFile(path) as z:
            keras = any(n.rsplit("/", 1)[-1] == "saved_model.pb" for n in z.namelist())
        if keras:
            with open(path, "rb") as f:
                return head_from_spec(read_keras_nsfw_zip(f.read(), location))
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if LOOKUP_META_KEY in meta:
            return head_from_spec(spec_from_converted(load_state_dict(path), meta))
    sd = load_state_dict(path)
    return head_from_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})


def input_dim(head: nn.Module) -> int:
    if isinstance(head, KerasNsfwHead):
        return head.in_features
    if isinstance(head, LaionNsfwHead):
        return head.linear_1.in_features
    return head.layers[0].in_features


@dataclass
class NsfwScorer:
    """punsafe from image embeddings (the embeddings of the CLIP the config names)."""

    method: str
    device: str
    head: nn.Module | None = None  # mlp
    prompt_emb: torch.Tensor | None = None  # zeroshot: [P, D], safe prompts first
    n_safe: int = 0

    @torch.inference_mode()
    def score(self, image_emb) -> np.ndarray:
        """[N, D] normalised image embeddings -> punsafe [N] in [0, 1] (float32)."""
        x = torch.as_tensor(np.asarray(image_emb) if not torch.is_tensor(image_emb) else image_emb)
        x = x.to(self.device, dtype=torch.float32)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if self.method == "mlp":
            return self.head(x).float().cpu().numpy().astype(np.float32)
        probs = self._category_probs(x)
        return probs[:, self.n_safe :].sum(dim=1).clamp(0, 1).cpu().numpy().astype(np.float32)

    def _category_probs(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(x, dim=-1)
        return (100.0 * x @ self.prompt_emb.T).softmax(dim=-1)

    @torch.inference_mode()
    def tags(self, image_emb) -> list[str]:
        """LAION-400M's tag (zeroshot only): NSFW when both top-2 categories are unsafe prompts,
        UNLIKELY when neither is, UNSURE otherwise."""
        if self.method != "zeroshot":
            raise ValueError("tags() exists for the zeroshot method only")
        x = torch.as_tensor(image_emb, dtype=torch.float32).to(self.device)
        top2 = self._category_probs(x).topk(min(2, self.prompt_emb.shape[0]), dim=-1).indices.cpu()
        unsafe = (top2 >= self.n_safe).sum(dim=1).tolist()
        return ["NSFW" if u == top2.shape[1] else "UNLIKELY" if u == 0 else "UNSURE" for u in unsafe]


def load_nsfw(cfg: NsfwModelConfig, clip: ClipScorer, cache=None) -> NsfwScorer:
    """The punsafe model `cfg` describes, reading embeddings of `clip` (cfg.clip's model)."""
    if cfg.method == "zeroshot":
        prompts = list(cfg.safe_prompts) + list(cfg.unsafe_prompts)
        emb = clip.encode_texts(prompts).to(clip.device)
        return NsfwScorer("zeroshot", clip.device, prompt_emb=emb, n_safe=len(cfg.safe_prompts))
    if not cfg.weights:
        raise ValueError("models.nsfw.weights is required for method 'mlp'")
    head = head_from_file(cfg.weights, cfg.sha256, cache)
    if input_dim(head) != clip.embed_dim:
        raise ValueError(
            f"NSFW head {cfg.weights} expects {input_dim(head)}-d embeddings but CLIP {clip.name} gives "
            f"{clip.embed_dim}-d: set models.nsfw.clip to the CLIP it was trained on"
        )
    return NsfwScorer("mlp", clip.device, head=head.to(clip.device))
