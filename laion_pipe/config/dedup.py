"""The `dedup:` section: global exact dedup and blocklists."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class DedupConfig(Section):
    key: Literal["url", "url_text"] = Field("url", description="LAION-5B deduplicated by url")
    rows_per_part: int = Field(10_000, ge=1, description="rows per unique/ part = one download shard")
    n_buckets: int | None = Field(None, ge=1, description="hash buckets for the shuffle; default from input size")
    blocked_domains: list[str] = Field([], description="files (one domain per line); subdomains are blocked too")
    blocked_url_hashes: list[str] = Field([], description="files of URL hashes to remove (hex sha256 of the url)")
    already_curated: list[str] = Field([], description="parquet files/globs with a url/URL column from earlier runs")
