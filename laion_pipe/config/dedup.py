"""The `dedup:` section: global exact dedup and blocklists."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import Section


class DedupConfig(Section):
    key: Literal["url", "url_text"] = Field(
        "url",
        description="what makes two candidates the same: the image url (LAION-5B) or the (url, text) pair; "
        "dropped copies are counted as duplicate_url or duplicate_pair",
    )
    rows_per_part: int = Field(10_000, ge=1, description="rows per unique/ part = one download shard")
    n_buckets: int | None = Field(
        None, ge=1, description="hash buckets of the shuffle; default: total input bytes / bucket_target_bytes"
    )
    bucket_target_bytes: int = Field(
        64 * 2**20,
        ge=1,
        description="input (parquet) bytes per bucket when n_buckets is not set: bounds the memory of a bucket task",
    )
    group_target_bytes: int = Field(
        256 * 2**20,
        ge=1,
        description="input bytes per bucketing task: small candidate files are grouped so a task writes "
        "fewer, larger bucket files",
    )
    coarse_buckets: int = Field(
        1024,
        ge=1,
        description="reduce tasks at most: the buckets are grouped into this many contiguous hash ranges; each "
        "bucketing task writes one file with one segment per range and flush, each reduce task reads one range "
        "(ranged reads grow with the input times this number; a reduce task spills about input bytes / this "
        "number to local disk)",
    )
    scratch_dir: str | None = Field(
        None,
        description="local folder for the reduce tasks' spill files; default: the Dask worker's local directory",
    )
    flush_rows: int = Field(
        1_000_000,
        ge=1,
        description="rows a bucketing task holds before writing them out to bucket files: bounds its memory",
    )
    blocked_domains: list[str] = Field(
        [], description="text files (one domain per line, # comments); subdomains of a listed domain are blocked too"
    )
    blocked_url_hashes: list[str] = Field(
        [],
        description="text files of URL hashes to remove, one hex digest of the url per line; MD5, SHA-1 or "
        "SHA-256, told apart by length",
    )
    already_curated: list[str] = Field(
        [],
        description="files/globs of an earlier run or dataset: parquet with a url/URL column (and text/TEXT for "
        "key url_text), or text files with one URL per line; matching candidates are dropped as already_curated",
    )
