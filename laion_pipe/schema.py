"""Column names, subsets, drop reasons and pyarrow schemas that stages exchange.

Stages only talk to each other through files, so these names are the contract (README.md, "What
each stage does"): change one here and every reader and writer follows. Where each stage's files
live inside its folder is `shards.py`'s; which stages exist is `stages/registry.py`'s table.
"""
from __future__ import annotations

import mmh3
import pyarrow as pa

from .stages.registry import FUNNEL_STAGES, ORDER, PIPELINE, STAGE_DIRS  # noqa: F401 - derived from the stage table

SUBSETS: tuple[str, ...] = ("en", "multi", "nolang")
"""LAION's three language subsets, in the order tables list them."""

ANY_SUBSET = "*"
"""Key for drop reasons counted before a pair has a subset (e.g. a bad URL at extract)."""

STATE_DIR = "_state"

# Drop reasons: a short fixed vocabulary (README.md, "What each stage does"). Stages may only
# count reasons listed here, so that the funnel in the stats stays comparable between runs.
DROP_REASONS: frozenset[str] = frozenset(
    {
        # extract
        "no_alt",
        "text_too_short",
        "too_few_words",
        "bad_url",
        "url_too_long",
        "data_url",
        "javascript_url",
        "excluded_extension",
        "duplicate_in_file",
        # extract, a URL list's bounds on its published columns (extract.lists.bounds)
        "published_similarity",
        "published_unsafe",
        "published_watermark",
        "published_aesthetic",
        "published_size",
        "published_language",
        "published_bound",
        # dedup
        "duplicate_url",
        "duplicate_pair",
        "blocked_domain",
        "blocked_url_hash",
        "already_curated",
        # download
        "http_error",
        "http_404",
        "http_5xx",
        "http_429",
        "timeout",
        "connection_error",
        "dns_error",
        "tls_error",
        "blocked_address",
        "opt_out",
        "too_many_redirects",
        "redirect_loop",
        "body_too_large",
        "truncated_body",
        "image_too_small_bytes",
        "not_an_image",
        "decode_error",
        "format_not_allowed",
        "decompression_bomb",
        "image_too_small",
        "image_too_large",
        "bad_aspect_ratio",
        # score
        "score_error",
        # select
        "low_similarity",
        "unsafe",
        "watermark",
        "low_aesthetic",
        "side_too_small",
        "near_duplicate",  # perceptual hash within select.neardup.phash_max_distance bits of a higher-ranked image
        "semantic_duplicate",  # CLIP image embedding within select.neardup.eps (SemDeDup) of a higher-ranked image
    }
)

# Columns from extract on.
UID, URL, TEXT, PAGE_URL, LANGUAGE, LANGUAGE_SCORE, SUBSET = (
    "uid",
    "url",
    "text",
    "page_url",
    "language",
    "language_score",
    "subset",
)
LICENSE = "license"


def pair_uid(page_url: str, url: str, text: str) -> str:
    """The `uid` extract gives a pair found on a page (or in a list without its own uid): stable,
    so reruns and other machines give the same uid."""
    return format(mmh3.hash128(f"{page_url}\x00{url}\x00{text}", signed=False), "032x")


SOURCE = "source"
"""A URL list's other columns, as one JSON object per pair (null for crawl pairs): how they travel
through dedup to download and select, which expand them (`extra_columns.py`)."""

CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string(), nullable=False),
        pa.field(TEXT, pa.string(), nullable=False),
        pa.field(PAGE_URL, pa.string()),
        pa.field(LANGUAGE, pa.string()),
        pa.field(LANGUAGE_SCORE, pa.float32()),
        pa.field(SUBSET, pa.string(), nullable=False),
        pa.field(LICENSE, pa.string()),
        pa.field(SOURCE, pa.string()),
    ]
)
"""candidates/{subset}/part-NNNNN.parquet and unique/{subset}/part-NNNNN.parquet."""

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("url", pa.string()),
        pa.field("text", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("page_url", pa.string()),
        pa.field("language", pa.string()),
        pa.field("language_score", pa.float32()),
        pa.field("subset", pa.string()),
        pa.field("license", pa.string()),
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field("sha256", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("phash", pa.int64()),
        pa.field("colour_grid", pa.binary(12)),
    ]
)
"""images/{subset}/NNNNN.parquet: the input columns, `caption` (= text, img2dataset's name),
img2dataset's result columns, our drop `reason`, `phash` (the stored image's 64-bit perceptual
hash as int64, laion_pipe.neardup.phash) and `colour_grid` (the mean R, G, B of each quadrant of
the stored image, 12 bytes, which confirms a pHash match); both null for a failed sample or a
shard written before them; then a URL list's own columns, when the run read lists
(`extra_columns.py`: under their own names, `source_` before one of ours)."""

IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
"""Tar member extensions that hold a sample's image (download writes one of them)."""

STATUS_OK, STATUS_ERROR = "ok", "score_error"
"""`status` of a row of scores/: scored, or not (its drop reason is `score_error`)."""

SCORE_COLUMNS: tuple[str, ...] = ("similarity", "punsafe", "pwatermark", "aesthetic")

SCORE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("uid", pa.string()),
        pa.field("similarity", pa.float32()),
        pa.field("punsafe", pa.float32()),
        pa.field("pwatermark", pa.float32()),
        pa.field("aesthetic", pa.float32()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
    ]
)
"""scores/{subset}/NNNNN.parquet. Scores are NaN where status is score_error or a head is not configured."""

# LAION-5B's published metadata columns, plus ours (final dataset parquet).
LAION_COLUMNS: tuple[str, ...] = (
    "URL",
    "TEXT",
    "WIDTH",
    "HEIGHT",
    "similarity",
    "hash",
    "punsafe",
    "pwatermark",
    "LANGUAGE",
)
DATASET_EXTRA_COLUMNS: tuple[str, ...] = ("aesthetic", "key", "uid", "subset", "phash")

DATASET_SCHEMA = pa.schema(
    [
        pa.field("URL", pa.string()),
        pa.field("TEXT", pa.string()),
        pa.field("WIDTH", pa.int32()),
        pa.field("HEIGHT", pa.int32()),
        pa.field("similarity", pa.float32()),
        pa.field("hash", pa.int64()),
        pa.field("punsafe", pa.float32()),
        pa.field("pwatermark", pa.float32()),
        pa.field("LANGUAGE", pa.string()),
        pa.field("aesthetic", pa.float32()),
        pa.field("key", pa.string()),
        pa.field("uid", pa.string()),
        pa.field("subset", pa.string()),
        pa.field("phash", pa.int64()),
    ]
)
"""dataset/{name}/NNNNN.parquet: LAION-5B's columns first, then ours (`phash`: the image's perceptual
hash, which training's decontamination compares with evaluation images); then a URL list's own
columns, when the run read lists (`extra_columns.py`)."""
