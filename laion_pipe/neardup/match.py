"""Which rows are copies of a higher-ranked row: pure functions over one bucket's rows.

The rule, for both detectors: sort the rows by `rank_order` (best first); a row is dropped when
some row ranked above it is its copy (hash within `max_distance` bits, or cosine at least
1 - eps), and its recorded survivor is the best-ranked such row. The comparison is blocked
(`CHUNK` rows at a time against every row above them), so memory stays O(CHUNK x rows) and a
popular picture seen a million times costs time, not memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phash import colour_difference, hamming

CHUNK = 1024


@dataclass(frozen=True)
class Drops:
    """Rows to drop (indices into the input), their survivors and the distance (Hamming bits) or
    cosine to them, each array of the same length, ordered by dropped row."""

    dropped: np.ndarray
    survivor: np.ndarray
    score: np.ndarray

    @staticmethod
    def none() -> Drops:
        return Drops(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def rank_order(similarity, area, order_keys) -> np.ndarray:
    """Indices of the rows best first: the highest CLIP similarity, then the largest original
    area (width x height), then the earliest `order_keys` (select's input order). NaN similarity
    ranks last."""
    sim = np.asarray(similarity, dtype=np.float64)
    sim = np.where(np.isnan(sim), -np.inf, sim)
    area = np.asarray(area, dtype=np.float64)
    area = np.where(np.isnan(area), -1.0, area)
    keys = np.asarray(order_keys, dtype=object)
    # lexsort sorts by the last key first; the order keys are strings: sort them to integer ranks
    key_rank = np.empty(len(keys), dtype=np.int64)
    key_rank[np.argsort(keys, kind="stable")] = np.arange(len(keys))
    return np.lexsort((key_rank, -area, -sim))


def _first_match(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `mask` [r, c] that have a True, and the first True column of each."""
    has = mask.any(axis=1)
    return np.flatnonzero(has), mask[has].argmax(axis=1)


def hash_drops(hashes, order: np.ndarray, max_distance: int, colours: tuple[np.ndarray, np.ndarray] | None = None,
               max_colour: int | None = None) -> Drops:
    """Rows (already grouped so that only rows sharing a band are passed together, or any set of
    rows) whose pHash is within `max_distance` bits of a higher-ranked row's and, with `colours`
    ([N, 12] colour grids and their [N] validity, `phash.colour_array`) and `max_colour`, whose
    colour grids differ by at most `max_colour` levels (a pair where either has no grid: the
    hash alone decides)."""
    h = np.asarray(hashes, dtype=np.int64)[order]
    check = colours is not None and max_colour is not None
    if check:
        grid, valid = colours[0][order], colours[1][order]  # type: ignore[index]
    dropped, survivor, score = [], [], []
    for a in range(1, len(h), CHUNK):
        b = min(a + CHUNK, len(h))
        d = hamming(h[a:b, None], h[None, :b])  # [b-a, b]
        upper = np.arange(b)[None, :] < np.arange(a, b)[:, None]  # only rows ranked above
        close = (d <= max_distance) & upper
        if check and close.any():
            r, c = np.nonzero(close)  # only the hash matches (few) get their colours compared
            far = (colour_difference(grid[a + r], grid[c]) > max_colour) & valid[a + r] & valid[c]
            close[r[far], c[far]] = False
        rows, cols = _first_match(close)
        dropped.append(order[a + rows])
        survivor.append(order[cols])
        score.append(d[rows, cols].astype(np.float32))
    if not dropped:
        return Drops.none()
    return _sorted(np.concatenate(dropped), np.concatenate(survivor), np.concatenate(score))


def cosine_drops(emb, order: np.ndarray, eps: float) -> Drops:
    """Rows whose (L2-normalised) embedding has cosine >= 1 - eps with a higher-ranked row's."""
    e = np.asarray(emb, dtype=np.float32)[order]
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    e = e / np.where(norms > 0, norms, 1.0)
    threshold = np.float32(1.0 - eps)
    dropped, survivor, score = [], [], []
    for a in range(1, len(e), CHUNK):
        b = min(a + CHUNK, len(e))
        s = e[a:b] @ e[:b].T
        upper = np.arange(b)[None, :] < np.arange(a, b)[:, None]
        rows, cols = _first_match((s >= threshold) & upper)
        dropped.append(order[a + rows])
        survivor.append(order[cols])
        score.append(s[rows, cols])
    if not dropped:
        return Drops.none()
    return _sorted(np.concatenate(dropped), np.concatenate(survivor), np.concatenate(score))


def _sorted(dropped: np.ndarray, survivor: np.ndarray, score: np.ndarray) -> Drops:
    i = np.argsort(dropped, kind="stable")
    return Drops(dropped[i].astype(np.int64), survivor[i].astype(np.int64), score[i].astype(np.float32))
