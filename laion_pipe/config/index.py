"""The `index:` section: the faiss kNN indexes of a run's CLIP embeddings (`laion-pipe index`).

The index type follows the number of embeddings, as autofaiss and clip-retrieval choose it: exact
search (a flat inner-product index) while a query can scan every vector within a few milliseconds,
IVF-PQ beyond that (a coarse quantizer finds the nearest lists, PQ codes of `pq_m` bytes per vector
are scanned in them). Nothing here changes which pairs a run keeps: the index only looks at them.
"""
from __future__ import annotations

from pydantic import Field

from .base import Section


class IndexConfig(Section):
    exact_max_rows: int = Field(
        200_000,
        ge=0,
        description="at most this many embeddings in a model's space: exact search (faiss IndexFlatIP, "
        "recall 1); more: IVF-PQ (a full scan of 200k x 512 floats takes ~10 ms on 2 cores, of 1M ~60 ms)",
    )
    factory: str | None = Field(
        None,
        description="a faiss index_factory string for the large case instead of the rule "
        "(e.g. 'IVF4096_HNSW32,PQ64x8'); its metric is inner product (embeddings are L2-normalised)",
    )
    nlist: int | None = Field(
        None,
        ge=1,
        description="IVF lists; default: the power of two nearest 2*sqrt(n) (2048 at 1M), at most train_rows/39 "
        "(faiss's minimum of training points per centroid) and at least 64",
    )
    pq_m: int | None = Field(
        None,
        ge=1,
        description="PQ bytes per vector (8-bit codes); default: the largest divisor of the dimension <= dim/8 "
        "(64 for 512-d, as autofaiss picks for LAION's ViT-B/32 embeddings)",
    )
    train_rows: int = Field(
        100_000, ge=1000, description="embeddings sampled (uniformly, seeded) to train the IVF-PQ quantizers "
        "(k-means costs rows x nlist x dim per iteration: the part of a build that does not spread over workers)"
    )
    rows_per_task: int = Field(
        1_000_000, ge=1, description="embeddings one Dask task encodes into IVF-PQ lists (bounds its memory: 4 bytes x dim each)"
    )
    nprobe: int = Field(
        32, ge=1, description="IVF lists a query visits by default (serve can change it per query)"
    )
    text: bool = Field(True, description="also index the caption embeddings (text.index: search captions by meaning)")
    seed: int = Field(0, description="seed of the training sample and of k-means")
