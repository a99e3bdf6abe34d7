"""Serving files from one folder and nothing outside it.

The page serves the run's report (`RUN/stats/`), its exports (`RUN/exports/`) and its own static
files. The path a browser sends arrives percent-decoded once (by the ASGI server); it is never
decoded again, so `%252e%252e%252f` stays a literal file name that does not exist. A path is
refused (404, without saying why) when it is absolute, contains `..`, `.` or an empty part, a
backslash or NUL, or when the file it names resolves, symlinks followed, outside the folder.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".csv": "text/csv; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".sha256": "text/plain; charset=utf-8",
}


def safe_file(root: str | Path, rel: str) -> Path | None:
    """The file `rel` names inside `root`, or None when it is not a regular file strictly inside
    `root` (see the module's rules)."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return None
    parts = PurePosixPath(rel).parts
    if any(p in ("", ".", "..") for p in rel.split("/")) or not parts:
        return None
    base = Path(root).resolve()
    try:
        full = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if full == base or not full.is_relative_to(base) or not full.is_file():
        return None
    return full


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
