"""The evaluation metrics on hand-made embeddings, where the right answer is known exactly."""
from __future__ import annotations

import numpy as np
import pytest

from laion_pipe.evaluate.metrics import (bootstrap, clip_score, frechet_distance, gaussian_stats, kernel_inception_distance,
                                        retrieval_chance, retrieval_top1)


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


def _kid_by_hand(a, b):
    """Binkowski et al.'s unbiased MMD^2 written out element by element."""
    d = a.shape[1]
    k = lambda x, y: (sum(xi * yi for xi, yi in zip(x, y)) / d + 1) ** 3  # noqa: E731
    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_and_about_zero_for_one_distribution():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(9, 5)), rng.normal(loc=0.5, size=(7, 5))
    assert kernel_inception_distance(a, b) == pytest.approx(_kid_by_hand(a, b), rel=1e-10)
    # unbiased: two small samples of one distribution average to 0 (each may be negative)
    same = [kernel_inception_distance(rng.normal(size=(12, 16)), rng.normal(size=(12, 16))) for _ in range(300)]
    shifted = [kernel_inception_distance(rng.normal(size=(12, 16)), rng.normal(loc=0.7, size=(12, 16))) for _ in range(50)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same)) + 1e-4
    assert min(same) < 0 < np.mean(shifted) and np.mean(shifted) > 10 * abs(np.mean(same))


def test_retrieval_chance_is_the_most_frequent_prompts_share():
    assert retrieval_chance(["a", "b", "c", "d"]) == 0.25
    assert retrieval_chance(["a", "a", "a", "b", "c", "a"]) == pytest.approx(4 / 6)
    # a model that draws one picture for everything gets exactly that when its picture is the majority's
    txt = {"a": np.array([1.0, 0.0, 0.0]), "b": np.array([0.0, 1.0, 0.0]), "c": np.array([0.0, 0.0, 1.0])}
    prompts = ["a", "b", "a", "c", "a", "b"]
    img = np.tile(txt["a"], (len(prompts), 1))
    assert retrieval_top1(img, prompts, np.stack([txt[p] for p in prompts])) == retrieval_chance(prompts) == 0.5


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_samples():
    rng = np.random.default_rng(4)
    small = bootstrap(frechet_distance, rng.normal(size=(30, 3)), rng.normal(loc=1, size=(30, 3)), n=100)
    big_a, big_b = rng.normal(size=(600, 3)), rng.normal(loc=1, size=(600, 3))
    big = bootstrap(frechet_distance, big_a, big_b, n=100)
    assert big[0] <= frechet_distance(big_a, big_b) <= big[1]
    assert big[1] - big[0] < small[1] - small[0]
    assert big[0] < 3.0 < big[1]  # the true FD of N(0, I) and N(1, I) in 3-d: |mu|^2 = 3
