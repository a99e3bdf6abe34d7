"""Near-duplicate removal's speed: pHash per image, and SemDeDup against faiss brute force.

    python benchmarks/bench_neardup.py [--n 1000000] [--dim 64] [--images 500]

1. pHash (laion_pipe.neardup.phash.features, what download adds per stored image: the hash and
   the colour grid from the resized array): images/s on demo scenes at 256 px (half square, half
   341 x 256 as 4:3 pictures are stored), against
   imagehash.phash on the same arrays (download's hash before: Pillow's Lanczos thumbnail) and
   the JPEG encode the download stage already does per image.
2. Semantic dedup on `--n` synthetic unit embeddings (clusters of random centres, 5% of rows
   planted as copies: the row of another plus noise, cosine >= 0.999): SemDeDup's recipe as
   `laion_pipe.neardup` runs it in a reduce task (faiss spherical k-means on a sample, assignment,
   then `match.cosine_drops` within each cluster), vs the baseline: faiss brute-force kNN
   (IndexFlatIP, k=2) of every row against all rows in one process, each row dropped when its
   nearest other row is within eps. Both report recall of the planted copies.

Last line: `ratio: <SemDeDup embeddings/s / brute-force embeddings/s>`. The machine may be shared:
timings are of this run only.
"""
from __future__ import annotations

import argparse
import io
import math
import sys
import time

import numpy as np


def bench_phash(n: int) -> tuple[float, float, float]:
    """images/s of our pHash + colour grid (from the array, as download calls it), of imagehash's
    pHash on the same arrays (what download called before: Pillow's Lanczos thumbnail), and of
    the JPEG encode download does anyway."""
    import cv2
    import imagehash
    from PIL import Image

    from laion_pipe.models.demo import synth
    from laion_pipe.neardup.phash import features

    rng = np.random.default_rng(0)
    # what download stores at 256 px keep_ratio: squares, and 4:3 pictures as 341 x 256
    arrays = [np.ascontiguousarray(np.asarray(synth.render(synth.random_scene(rng), 341 if i % 2 else 256))[:256])
              for i in range(min(n, 100))]
    features(arrays[0])  # imports and first-call set-up out of the timing
    imagehash.phash(Image.fromarray(arrays[0]))
    t = time.perf_counter()
    for i in range(n):
        features(arrays[i % len(arrays)])
    ours = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        imagehash.phash(Image.fromarray(arrays[i % len(arrays)]))
    reference = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        cv2.imencode(".jpg", arrays[i % len(arrays)], [cv2.IMWRITE_JPEG_QUALITY, 95])
    encoding = n / (time.perf_counter() - t)
    return ours, reference, encoding


def planted(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings around 1000 centres; 5% of rows are copies of an earlier row. Returns the
    embeddings and, per row, the row it copies (-1 for originals)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    emb = centres[rng.integers(0, 1000, n)] + rng.normal(scale=0.6, size=(n, dim)).astype(np.float32)
    of = np.full(n, -1, dtype=np.int64)
    copies = rng.choice(np.arange(1, n), size=n // 20, replace=False)
    of[copies] = (rng.random(len(copies)) * copies).astype(np.int64)
    of[copies] = np.where(of[of[copies]] >= 0, of[of[copies]], of[copies])  # a copy of an original
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[copies] = emb[of[copies]] + rng.normal(scale=0.002, size=(len(copies), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, of


def semdedup(emb: np.ndarray, eps: float, cluster_size: int) -> np.ndarray:
    import faiss

    from laion_pipe.neardup import match

    n, dim = emb.shape
    k = max(1, math.ceil(n / cluster_size))
    sample = emb[np.random.default_rng(0).choice(n, size=min(n, 200_000), replace=False)]
    km = faiss.Kmeans(dim, k, niter=20, seed=0, spherical=True, max_points_per_centroid=max(256, len(sample) // k))
    km.train(sample)
    _, assign = km.index.search(emb, 1)
    assign = assign[:, 0]
    dropped = np.zeros(n, dtype=bool)
    order_all = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order_all], np.arange(k + 1))
    for c in range(k):
        rows = order_all[bounds[c]:bounds[c + 1]]
        if len(rows) < 2:
            continue
        d = match.cosine_drops(emb[rows], np.arange(len(rows)), eps)  # rank = input order here
        dropped[rows[d.dropped]] = True
    return dropped


def brute(emb: np.ndarray, eps: float) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    sims, ids = index.search(emb, 2)
    n = len(emb)
    # a row is a copy of an earlier row (same rule: the earlier stays) when its nearest other row is close
    other = np.where(ids[:, 0] == np.arange(n), ids[:, 1], ids[:, 0])
    sim = np.where(ids[:, 0] == np.arange(n), sims[:, 1], sims[:, 0])
    return (sim >= 1 - eps) & (other < np.arange(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--eps", type=float, default=0.001)
    ap.add_argument("--cluster-size", type=int, default=20_000)
    args = ap.parse_args(argv)
    hashing, reference, encoding = bench_phash(args.images)
    print(f"pHash: {hashing:,.0f} images/s at 256 px (256 x 256 and 341 x 256) with its colour grid ({hashing / reference:.1f}x imagehash.phash on "
          f"the same arrays: {reference:,.0f} images/s; the JPEG encode download does anyway: {encoding:,.0f} images/s)")
    emb, of = planted(args.n, args.dim)
    truth = of >= 0
    t = time.perf_counter()
    ours = semdedup(emb, args.eps, args.cluster_size)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    base = brute(emb, args.eps)
    t_base = time.perf_counter() - t
    for name, got, secs in (("SemDeDup (k-means + in-cluster cosine)", ours, t_ours), ("faiss brute-force kNN", base, t_base)):
        recall = (got & truth).sum() / truth.sum()
        precision = (got & truth).sum() / max(got.sum(), 1)
        print(f"{name}: {args.n:,} embeddings ({args.dim}-d) in {secs:.1f}s = {args.n / secs:,.0f}/s, "
              f"recall of planted copies {recall:.4f}, precision {precision:.4f}")
    print(f"ratio: {t_base / t_ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
