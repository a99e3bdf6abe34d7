"""What the WAT and WARC readers both produce: one page with its images, before any rule."""
from __future__ import annotations

from dataclasses import dataclass, field


class BadRecord(ValueError):
    """A record whose content cannot be used; `kind` is the short name counted in the manifest."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class PageImages:
    """The `<img>` of one page that carry an alt attribute, as the page wrote them.

    `images` holds `(src, alt)` with HTML entities decoded (what a browser sees) but nothing
    else touched: resolving, cleaning and filtering are the rules' job, so the WAT and the
    WARC path share them. `alt` is None for an image without alt attribute (counted, dropped).
    `base` is the page's `<base href>` if it has one, not yet resolved.
    """

    page_url: str
    base: str | None
    images: list[tuple[str, str | None]]
    license: str | None
    offset: int
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (kind, message): salvaged problems
