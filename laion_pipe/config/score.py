"""The `score:` section: batching, devices and outputs of the score stage.

Nothing here changes a score's value except `save_embeddings` (which adds files) and `published`
(a URL list's own scores used instead of computed ones): thresholds live in `select:` so that
changing one never reruns the models (DESIGN.md)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

ScoreName = Literal["similarity", "punsafe", "pwatermark", "aesthetic"]

from .base import Section


class ScoreConfig(Section):
    batch_size: int = Field(64, ge=1, description="images per model forward pass; captions are encoded in batches of the same size")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="auto (cuda when the worker has a GPU, else cpu), cpu, cuda, cuda:N or mps"
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="CLIP weights' precision; auto = fp16 on cuda, fp32 elsewhere (half precision on CPU is slower)"
    )
    decode_threads: int | None = Field(
        None, ge=1, description="threads that decode and preprocess images while the model runs; default min(8, cores)"
    )
    prefetch_batches: int = Field(3, ge=1, description="decoded batches kept ready ahead of the model (bounds memory)")
    request_gpu: bool | None = Field(
        None,
        description="ask Dask for the worker resource GPU=1 per shard, so score tasks only land on GPU workers; "
        "default: yes when the cluster section declares GPUs (a task asking for a resource no worker has would wait forever)",
    )
    save_embeddings: bool = Field(
        True,
        description="also write clip-retrieval's layout under scores/{subset}/embeddings/ "
        "(img_emb/img_emb_NNNNN.npy, text_emb/text_emb_NNNNN.npy, metadata/metadata_NNNNN.parquet; float16, "
        "2 bytes x dim per image and caption); the index stage (kNN search, `laion-pipe serve`) reads them",
    )
    published: dict[ScoreName, str] = Field(
        {},
        description="keep a URL list's published scores instead of computing them: score -> the list's column, e.g. "
        "{similarity: similarity, punsafe: punsafe} for LAION's parquet; a pair without a published value gets the computed "
        "one. Default: every score computed (the statistics say which were published and which computed)",
    )
