"""Equal-area aspect-ratio buckets, as SDXL-style training uses them.

Cropping every image to a square throws away the sides of wide pictures and the top and bottom
of tall ones, and the model learns that subjects are cut off. Buckets keep roughly the same
pixel count per sample (so a batch costs the same whatever its shape) but several shapes: each
image goes to the bucket whose aspect ratio is nearest its own, is resized to cover it and
cropped by a few pixels only, and every batch is drawn from one bucket so its tensors stack.

Sides are multiples of 8 (a VAE downsamples by 8; a pixel-space UNet by 2 per level).
"""
from __future__ import annotations

import math

MULTIPLE = 8


def bucket_sizes(resolution: int, n: int, max_ratio: float = 2.0, multiple: int = MULTIPLE) -> list[tuple[int, int]]:
    """`n` (height, width) buckets whose areas are close to `resolution`**2, with aspect ratios
    (width / height) spread evenly in log space from 1/max_ratio to max_ratio (an odd `n`
    includes the square). Each side is rounded to `multiple`, choosing among the four
    floor/ceil combinations not already taken the one nearest in area and ratio; when all four
    are taken (a small resolution with many buckets) that ratio is dropped, so fewer than `n`
    may come back. The set is symmetric (each tall bucket has its wide twin); an even `n`
    gives n + 1 buckets, since the square is always one. Ordered from tallest to widest."""
    if n < 1:
        raise ValueError(f"aspect_buckets must be >= 1, got {n}")
    if resolution < multiple:
        raise ValueError(f"resolution {resolution} is under the bucket side multiple {multiple}")
    area = resolution * resolution
    # The wide half (width >= height), mirrored for the tall half: the set is symmetric.
    wide: list[tuple[int, int]] = []
    m = n if n % 2 else n + 1
    for i in range(m // 2, m):
        log_r = math.log(max_ratio) * (2 * i - (m - 1)) / (m - 1) if m > 1 else 0.0
        h, w = math.sqrt(area / math.exp(log_r)), math.sqrt(area * math.exp(log_r))
        candidates = [(hh, ww) for hh in _round_both(h, multiple) for ww in _round_both(w, multiple) if ww >= hh]
        fresh = [c for c in candidates if c not in wide]
        if fresh:
            wide.append(min(fresh, key=lambda c: 2 * abs(c[0] * c[1] / area - 1) + abs(math.log(c[1] / c[0]) - log_r)))
    both = set(wide) | {(w, h) for h, w in wide}
    return sorted(both, key=lambda c: c[1] / c[0])


def _round_both(x: float, multiple: int) -> set[int]:
    return {max(multiple, math.floor(x / multiple) * multiple), max(multiple, math.ceil(x / multiple) * multiple)}


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest the image's (in log space, so 2:1 and
    1:2 are equally far from square)."""
    log_r = math.log(max(width, 1) / max(height, 1))
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][1] / buckets[i][0]) - log_r))
