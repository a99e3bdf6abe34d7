"""The `download:` section: HTTP client, safety and image checks."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class DownloadConfig(Section):
    image_size: int = Field(256, ge=1)
    resize_mode: Literal["keep_ratio", "center_crop", "border", "no"] = "keep_ratio"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    threads: int = Field(64, ge=1, description="requests in flight per shard")
    per_host: int = Field(16, ge=1, description="concurrent connections per host")
    timeout: float = Field(10.0, gt=0, description="total seconds per request")
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(10.0, gt=0)
    retries: int = Field(2, ge=0, description="retries for transient failures (timeouts, 5xx, 429)")
    max_bytes: int = Field(20_000_000, ge=1, description="response size cap, enforced while streaming")
    max_redirects: int = Field(5, ge=0)
    user_agent: str = "laion-pipe/0.1 (+https://github.com/laion-pipe)"
    allow_cidrs: list[str] = Field([], description="non-public networks that may be contacted (tests/demo: 127.0.0.1/32)")
    opt_out_tokens: list[str] = ["noai", "noimageai"]
    min_bytes: int = Field(5000, ge=0, description="LAION dropped images under 5 kB")
    allowed_formats: list[str] = ["JPEG", "PNG", "WEBP"]
    max_pixels: int = Field(89_478_485, ge=1, description="decompression bomb limit")
    min_side: int = Field(0, ge=0)
    max_side: int | None = None
    max_aspect_ratio: float | None = Field(None, gt=1)
