"""The `select:` section: thresholds and subset recipes."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class SelectConfig(Section):
    similarity: dict[str, float] = Field({"en": 0.28, "multi": 0.26, "nolang": 0.26})
    max_punsafe: float | None = None
    max_pwatermark: float | None = None
    min_side: int = Field(0, ge=0)
    samples_per_shard: int = Field(10_000, ge=1)
