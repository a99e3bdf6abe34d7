"""A result set written out as a file: a URL list, or a blocklist a rerun of select (or dedup) applies.

The blocklist is the URL-hash list format that `blocklists.load_url_hashes` already reads (one hex
SHA-256 of a URL's UTF-8 bytes per line, `#` comments): the format Re-LAION published its removals
in, so a list made here can be shared without republishing the links, and a published list is
applied the same way. Applied at select (`select.blocked_url_hashes`) it removes the pairs from
every recipe as `blocked_url_hash` without downloading or scoring anything again; applied at dedup
(`dedup.blocked_url_hashes`) it removes them before download.

Files go to `RUN/exports/` (no stage owns that folder, so no stage's cleanup removes them) under a
name made only of safe characters, never a path the page sends.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import time
from pathlib import Path

import yaml

from .. import fsio
from ..pipeline import saved_workflow_path

EXPORT_DIR = "exports"
FORMATS = {"blocklist": ".sha256", "urls": ".txt"}
_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(name: str | None, fallback: str) -> str:
    """A file stem of letters, digits, `_` and `-` (at most 60 characters)."""
    stem = _SAFE.sub("-", (name or "").strip()).strip("-.")[:60] or _SAFE.sub("-", fallback).strip("-.")[:40] or "export"
    return stem


def url_sha256(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def write_export(out: str, urls: list[str], fmt: str, name: str | None, describe: str) -> Path:
    """Write the URLs (deduplicated, in result order) as `fmt`; returns the file's path."""
    if fmt not in FORMATS:
        raise ValueError(f"format: one of {', '.join(FORMATS)}")
    stem = safe_name(name, describe)
    folder = Path(out, EXPORT_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{FORMATS[fmt]}"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{n}{FORMATS[fmt]}"
    unique = list(dict.fromkeys(u for u in urls if u))
    header = [f"# laion-pipe serve export ({fmt}): {describe}".replace("\n", " "),
              f"# {len(unique)} URLs, {time.strftime('%Y-%m-%d %H:%M:%S')}"]  # fmt: skip
    if fmt == "blocklist":
        header.append("# one SHA-256 of a URL's UTF-8 bytes per line (select.blocked_url_hashes / dedup.blocked_url_hashes)")
        lines = [url_sha256(u) for u in unique]
    else:
        lines = unique
    fsio.write_bytes_atomic(str(path), ("\n".join(header + lines) + "\n").encode())
    return path


def apply_command(out: str, path: Path) -> str:
    """The commands that apply a blocklist to the run: select with the list added to the ones
    the run already uses, then the index (its kept flags) and the statistics (the funnel)."""
    existing: list[str] = []
    try:
        saved = yaml.safe_load(Path(saved_workflow_path(out)).read_text()) or {}
        existing = list((saved.get("select") or {}).get("blocked_url_hashes") or [])
    except (OSError, yaml.YAMLError):
        pass
    lists = [p for p in existing if p != str(path)] + [str(path)]
    value = "[" + ", ".join(f'"{p}"' for p in lists) + "]"
    q = shlex.quote
    return (f"laion-pipe select --out {q(out)} --set {q('select.blocked_url_hashes=' + value)} && "
            f"laion-pipe index --out {q(out)} && laion-pipe stats {q(out)}")
