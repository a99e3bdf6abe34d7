"""The evaluation metrics, as pure functions of CLIP embeddings.

Each is named for what it computes:

- `clip_score`: mean cosine similarity of each generated image with its own prompt (the
  "CLIPScore" of Hessel et al. without its 2.5 rescaling and clipping at 0, so a model drawing
  the wrong things can score below zero and the number stays on the CLIP's own cosine scale).
- `retrieval_top1`: the fraction of generated images for which the CLIP ranks the image's own
  prompt first among all evaluation prompts; a prompt text that occurs several times is one
  candidate, so an image drawn for either copy is right when that text wins.
- `retrieval_chance`: what a model that ignores its prompt scores at best: it draws one picture
  for every prompt, which retrieves one text, so it is right on that text's share of the images
  (the most frequent prompt's share; 1 / prompts when none repeats).
- `frechet_distance`: the Frechet distance between Gaussians fitted to two sets of embeddings,
  ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). On CLIP image embeddings of generated vs
  real held-out images this is FD-CLIP; it is *not* FID, which is defined on Inception-v3 features.
  With fewer samples than dimensions the covariances are rank-deficient and FD is strongly biased
  upwards: compare it only at equal sample counts, with its `bootstrap` interval.
- `kernel_inception_distance` (KID, Binkowski et al. 2018, here on CLIP embeddings): the unbiased
  estimate of the squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3; unbiased
  at any sample size (its expectation is 0 for two samples of one distribution), so it suits the
  few held-out images a small run has.

Embeddings are expected L2-normalised (`laion_pipe.models.clip.ClipScorer` returns them so).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg


def _as_2d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array [N, D], got shape {a.shape}")
    return a


def clip_score(image_emb, prompt_emb) -> float:
    """Mean row-wise cosine of paired normalised embeddings (row i of each: image i and its prompt)."""
    a, b = _as_2d(image_emb, "image_emb"), _as_2d(prompt_emb, "prompt_emb")
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings must have the same shape, got {a.shape} and {b.shape}")
    if not len(a):
        raise ValueError("clip_score of no images")
    return float((a * b).sum(axis=1).mean())


def retrieval_top1(image_emb, prompts: Sequence[str], prompt_emb) -> float:
    """Top-1 prompt retrieval accuracy: image i counts when, among the distinct texts of `prompts`,
    the one with the highest cosine to it is `prompts[i]`. `prompt_emb[i]` embeds `prompts[i]`."""
    img, txt = _as_2d(image_emb, "image_emb"), _as_2d(prompt_emb, "prompt_emb")
    if not (len(img) == len(prompts) == len(txt)):
        raise ValueError(f"need one prompt and one prompt embedding per image: {len(img)} images, "
                         f"{len(prompts)} prompts, {len(txt)} prompt embeddings")
    if not len(img):
        raise ValueError("retrieval_top1 of no images")
    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        first.setdefault(p, i)
    candidates = list(first.values())  # one row per distinct text
    column = {p: j for j, p in enumerate(first)}
    own = np.array([column[p] for p in prompts])
    picked = (img @ txt[candidates].T).argmax(axis=1)
    return float((picked == own).mean())


def retrieval_chance(prompts: Sequence[str]) -> float:
    """The most frequent prompt text's share of the images (see the module docstring)."""
    if not len(prompts):
        raise ValueError("retrieval_chance of no prompts")
    counts: dict[str, int] = {}
    for p in prompts:
        counts[p] = counts.get(p, 0) + 1
    return max(counts.values()) / len(prompts)


def kernel_inception_distance(emb_a, emb_b) -> float:
    """Unbiased MMD^2 between two embedding sets with k(x, y) = (x.y / d + 1)^3 (each set >= 2)."""
    a, b = _as_2d(emb_a, "emb_a"), _as_2d(emb_b, "emb_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: {a.shape[1]} and {b.shape[1]}")
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {m} and {n}")
    d = a.shape[1]
    k_aa = (a @ a.T / d + 1.0) ** 3
    k_bb = (b @ b.T / d + 1.0) ** 3
    k_ab = (a @ b.T / d + 1.0) ** 3
    return float((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
                 - 2.0 * k_ab.mean())


def bootstrap(metric, emb_a, emb_b, n: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of `metric(emb_a, emb_b)`: both sets resampled with
    replacement `n` times (the sampling noise of a distance between two finite samples)."""
    a, b = _as_2d(emb_a, "emb_a"), _as_2d(emb_b, "emb_b")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        ia, ib = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
        values.append(metric(a[ia], b[ib]))
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def gaussian_stats(emb) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of a set of embeddings [N, D], N >= 2."""
    a = _as_2d(emb, "emb")
    if len(a) < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {len(a)}")
    return a.mean(axis=0), np.cov(a, rowvar=False)


def frechet_distance(emb_a, emb_b, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two embedding sets (see the module docstring).

    The matrix square root is scipy's; when S_a S_b is singular (fewer samples than dimensions)
    and the root comes back non-finite, eps is added to both diagonals, as pytorch-fid does.
    A small imaginary part from rounding is dropped."""
    mu_a, s_a = gaussian_stats(emb_a)
    mu_b, s_b = gaussian_stats(emb_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"embedding sizes differ: {mu_a.shape[0]} and {mu_b.shape[0]}")
    covmean = scipy.linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(s_a)) * eps
        covmean = scipy.linalg.sqrtm((s_a + offset) @ (s_b + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu_a - mu_b
    return float(max(0.0, diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(covmean)))
