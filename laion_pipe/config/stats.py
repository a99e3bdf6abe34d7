"""The `stats:` section: the thresholds of LAION's table and the shape of the histograms.

The size thresholds of the table (256, 512, 1024) and its JSON keys are fixed by LAION's published
table, so they are not settings; what is configurable is what LAION also chose by convention.
"""
from __future__ import annotations

from pydantic import Field, model_validator

from .base import Section


class StatsConfig(Section):
    nsfw_threshold: float = Field(0.5, description="punsafe above this counts as NSFW (LAION's table: 0.5)")
    watermark_threshold: float = Field(
        0.8, description="pwatermark above this counts as watermarked (LAION's table: 0.8)"
    )
    top_n: int = Field(20, ge=1, description="how many languages and domains the top lists keep")
    similarity_range: tuple[float, float] = Field(
        (0.0, 0.5), description="similarity histogram range; values outside fall into the first/last bin"
    )
    similarity_bins: int = Field(50, ge=1, description="similarity histogram: number of equal-width bins")
    text_length_max: int = Field(
        400, ge=1, description="text-length histogram upper edge in characters; longer texts fall into the last bin"
    )
    text_length_bins: int = Field(40, ge=1, description="text-length histogram: number of equal-width bins")
    size_edges: list[int] = Field(
        [0, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 4096],
        description="WIDTH/HEIGHT histogram bin edges in pixels; the last bin is open-ended",
    )
    plots: bool = Field(True, description="draw the PNG plots and embed them in report.html")
    gallery: int = Field(
        6, ge=0, le=100,
        description="report.html gallery: pairs shown per group (kept pairs per dataset folder, removed pairs per "
        "score-based drop reason); 0 leaves the gallery out",
    )
    gallery_thumb: int = Field(96, ge=16, le=512, description="gallery thumbnails: longest side in pixels (JPEG, embedded)")
    gallery_scan_shards: int = Field(
        16, ge=1,
        description="gallery: shards read per group to choose from (a deterministic spread of them), so the gallery "
        "costs the same on a demo and on LAION-5B",
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> StatsConfig:
        lo, hi = self.similarity_range
        if not lo < hi:
            raise ValueError(f"similarity_range: lower edge {lo} must be below upper edge {hi}")
        edges = self.size_edges
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError("size_edges: need at least two strictly increasing edges")
        return self
