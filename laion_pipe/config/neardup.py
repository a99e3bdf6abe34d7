"""The `select.neardup:` section: near-duplicate removal at select time (laion_pipe.neardup).

Each detector is a drop reason of its own, so the funnel says how many pairs each removed. The
survivor of a set of copies is the pair with the highest CLIP similarity, then the larger original
resolution, then the earliest in select's input order."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class NearDupConfig(Section):
    phash: bool = Field(
        False,
        description="drop images whose perceptual hash is within phash_max_distance bits of a higher-ranked one "
        "(`near_duplicate`); off by default, as LAION-5B kept near-duplicates (the demo workflow turns it on)",
    )
    phash_max_distance: int = Field(
        4, ge=0, le=16,
        description="largest Hamming distance (bits of 64) between the pHashes of two copies; re-encodes and resizes "
        "move 0-4 bits (benchmarks/bench_neardup_world.py), distinct photos are rarely under 10 apart; distances "
        "between hashes are even (each has 32 bits set), so 3 acts as 2",
    )
    colour_max_difference: int | None = Field(
        12, ge=0, le=255,
        description="two images within phash_max_distance are copies only when their colour grids (mean R, G, B of "
        "each quadrant) differ by at most this many levels of 255 in every value: pHash reads brightness only, so "
        "the same layout in other colours hashes alike (re-encodes move the grid by under 5 levels, resizes by "
        "under 1, distinct demo scenes that pHash confuses by 14-200). null: the hash alone decides",
    )
    semantic: bool = Field(
        False,
        description="SemDeDup on the score stage's CLIP image embeddings (`semantic_duplicate`); needs "
        "score.save_embeddings: true",
    )
    eps: float = Field(
        0.0015, gt=0, lt=1,
        description="SemDeDup's eps: two images within a k-means cluster are copies when their cosine is at least "
        "1 - eps (SemDeDup used 0.0005-0.1 for ViT-B/16 on LAION-440M; it depends on the CLIP)",
    )
    cluster_size: int = Field(
        20_000, ge=2,
        description="target images per k-means cluster (k = ceil(images / cluster_size)): bounds a reduce task's "
        "memory, which compares the members of its clusters",
    )
    kmeans_sample: int = Field(
        200_000, ge=2, description="at most this many embeddings (a deterministic sample by key hash) fit the k-means centroids"
    )
    kmeans_iterations: int = Field(20, ge=1, description="k-means iterations (faiss)")
    rows_per_bucket: int = Field(
        200_000, ge=1,
        description="hash-band entries (or embeddings) per reduce task: the reduce phase's parallelism and memory "
        "(200,000 512-d embeddings are 400 MB)",
    )
    seed: int = Field(0, description="k-means seed (centroid initialisation)")

    @property
    def enabled(self) -> bool:
        return self.phash or self.semantic
