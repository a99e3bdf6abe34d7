"""Column names, subsets, drop reasons and pyarrow schemas that stages exchange.

Stages only talk to each other through files, so these names are the contract (DESIGN.md):
change one here and every reader and writer follows.
"""
from __future__ import annotations

import pyarrow as pa

SUBSETS: tuple[str, ...] = ("en", "multi", "nolang")
"""LAION's three language subsets, in the order tables list them."""

ANY_SUBSET = "*"
"""Key for drop reasons counted before a pair has a subset (e.g. a bad URL at extract)."""

# Stage names, in pipeline order. Each has a top-level output folder of the same role.
STAGES: tuple[str, ...] = ("extract", "dedup", "download", "score", "select", "stats")
STAGE_DIRS: dict[str, str] = {
    "extract": "candidates",
    "dedup": "unique",
    "download": "images",
    "score": "scores",
    "select": "dataset",
    "stats": "stats",
}
STATE_DIR = "_state"

# Drop reasons: a short fixed vocabulary (DESIGN.md). Stages may only count reasons listed here,
# so that the funnel in the stats stays comparable between runs.
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
    ]
)
"""candidates/{subset}/part-NNNNN.parquet and unique/{subset}/part-NNNNN.parquet."""

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
DATASET_EXTRA_COLUMNS: tuple[str, ...] = ("aesthetic", "key", "uid", "subset")

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
    ]
)
"""dataset/{name}/NNNNN.parquet: LAION-5B's columns first, then ours."""
