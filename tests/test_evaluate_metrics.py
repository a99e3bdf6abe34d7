"""The evaluation metrics on hand-made embeddings, where the right answer is known exactly."""
from __future__ import annotations

import numpy as np
import pytest

from laion_pipe.evaluate.metrics import clip_score, frechet_distance, gaussian_stats, retrieval_top1


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_clip_score_is_the_mean_paired_cosine():
    img = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert clip_score(img, txt) == pytest.approx((1.0 + 0.0 - 1.0) / 3)
    with pytest.raises(ValueError, match="same shape"):
        clip_score(img, txt[:2])


def test_retrieval_finds_a_planted_permutation():
    rng = np.random.default_rng(0)
    n = 12
    prompts = [f"prompt {i}" for i in range(n)]
    txt = unit(rng.normal(size=(n, 16)))
    perm = rng.permutation(n)
    # image i is drawn (with a little noise) for the prompt perm[i]; it is listed with prompt i
    img = unit(txt[perm] + 0.01 * rng.normal(size=(n, 16)))
    own = [prompts[p] for p in perm]
    own_emb = txt[perm]
    assert retrieval_top1(img, own, own_emb) == 1.0
    # the same images listed against the unpermuted prompts: right only where perm has a fixed point
    fixed = float(np.mean(perm == np.arange(n)))
    assert fixed < 1.0
    assert retrieval_top1(img, prompts, txt) == pytest.approx(fixed)


def test_retrieval_counts_a_repeated_prompt_text_as_one_candidate():
    txt_a, txt_b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    prompts = ["a", "a", "b"]
    prompt_emb = np.stack([txt_a, txt_a, txt_b])
    img = np.stack([txt_a, txt_a, txt_a])  # the third image was meant to be "b" but looks like "a"
    assert retrieval_top1(img, prompts, prompt_emb) == pytest.approx(2 / 3)


def test_fd_of_identical_sets_is_zero():
    x = np.random.default_rng(1).normal(size=(200, 8))
    assert frechet_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_shifted_gaussians_is_the_squared_shift():
    # same samples moved by d: identical covariance, so FD = |d|^2 exactly
    x = np.random.default_rng(2).normal(size=(300, 6))
    d = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert frechet_distance(x, x + d) == pytest.approx(float(d @ d), rel=1e-9, abs=1e-9)


def test_fd_of_scaled_gaussians_matches_the_closed_form():
    # y = 2x: S_y = 4 S_x, (S_x S_y)^(1/2) = 2 S_x, so FD = |mu_x|^2 + Tr(S_x + 4 S_x - 4 S_x) = |mu_x|^2 + Tr(S_x)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5)
    mu, cov = gaussian_stats(x)
    assert frechet_distance(x, 2 * x) == pytest.approx(float(mu @ mu + np.trace(cov)), rel=1e-7)


def test_fd_of_known_diagonal_gaussians():
    # independent coordinates: FD = sum (mu_a - mu_b)^2 + (sd_a - sd_b)^2 for the population;
    # sampled with the exact first two moments (standardised draws), so the sample value is exact too
    rng = np.random.default_rng(4)
    z = rng.normal(size=(1000, 3))
    z = (z - z.mean(0)) / z.std(0, ddof=1)
    z = np.linalg.qr(z - z.mean(0))[0] * np.sqrt(len(z) - 1)  # uncorrelated columns, unit variance
    mu_a, sd_a = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 0.5])
    mu_b, sd_b = np.array([1.0, 1.0, 0.0]), np.array([3.0, 2.0, 1.5])
    expected = float(((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum())
    assert frechet_distance(mu_a + sd_a * z, mu_b + sd_b * z) == pytest.approx(expected, rel=1e-7)


def test_fd_with_fewer_samples_than_dimensions_is_finite():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1.0
    fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(a[:1], b)
