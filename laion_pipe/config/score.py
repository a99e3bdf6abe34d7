"""The `score:` section: batching and devices of the score stage."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class ScoreConfig(Section):
    batch_size: int = Field(64, ge=1)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    save_embeddings: bool = False
