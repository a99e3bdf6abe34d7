"""The `stats:` section."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class StatsConfig(Section):
    nsfw_threshold: float = Field(0.5, description="punsafe above this counts as NSFW (LAION)")
    watermark_threshold: float = Field(0.8, description="pwatermark above this counts as watermarked (LAION)")
    top_n: int = Field(20, ge=1)
