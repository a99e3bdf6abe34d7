"""Where weight files come from: a local path, or a URL fetched once into the model cache.

Why a cache and not streaming: torch and open_clip load from a local path, and every Dask task
of the score stage loads the same few files, so each machine should download them once. Compute
nodes without internet use a cache folder filled beforehand by `laion-pipe models fetch`
(`models.cache_dir`, else `$LAION_PIPE_CACHE/models`, else `~/.cache/laion_pipe/models`).

Layout of the cache: `{cache}/{sha256(url)[:16]}/{file name}` (the file keeps its name: open_clip
and timm look at the suffix), and `manifest.json`, which `models fetch` writes: for each location,
the file, its size and its sha256. A download is hashed while it streams; a location pinned by a
sha256 whose bytes differ is refused and nothing is left in the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .. import fsio

MANIFEST = "manifest.json"
_CHUNK = 1 << 22


class MissingWeights(FileNotFoundError):
    """A weights file that is neither on disk nor in the cache, and could not be downloaded."""


class ChecksumMismatch(ValueError):
    """Downloaded (or cached) bytes whose sha256 is not the pinned one."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The model cache: `override` (models.cache_dir), else `$LAION_PIPE_CACHE/models`, else
    `~/.cache/laion_pipe/models`."""
    if override:
        return Path(override).expanduser()
    root = os.environ.get("LAION_PIPE_CACHE") or Path.home() / ".cache" / "laion_pipe"
    return Path(root) / "models"


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def file_name(location: str) -> str:
    """The name a URL's file keeps in the cache (percent escapes decoded: `sac%2Blogos...pth`
    is stored as `sac+logos...pth`)."""
    from urllib.parse import unquote

    return unquote(location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]) or "weights"


def cache_path(location: str, cache: str | os.PathLike | None = None) -> Path:
    """Where the file of URL `location` lives in the cache."""
    return cache_dir(cache) / hashlib.sha256(location.encode()).hexdigest()[:16] / file_name(location)


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(
    location: str,
    target: str | os.PathLike,
    sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> str:
    """Stream `location` into `target` (atomically), hashing on the way; returns the sha256.
    With `sha256` pinned, other bytes are refused (ChecksumMismatch) and `target` is not written.
    `progress(bytes_so_far, total_or_None)` is called after each chunk."""
    fs, p = fsio.fs_and_path(location)
    h, done = hashlib.sha256(), 0
    try:
        total = fs.size(p)
    except Exception:  # some servers do not say
        total = None
    tmp = Path(target).with_name(f"{fsio.TMP_PREFIX}{os.getpid()}-{Path(target).name}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    stream = {"block_size": 0} if location.startswith(("http://", "https://")) else {}  # one GET, no ranges
    try:
        with fs.open(p, "rb", **stream) as src, open(tmp, "wb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        got = h.hexdigest()
        if sha256 and got != sha256.lower():
            raise ChecksumMismatch(
                f"{location}: sha256 {got} does not match the pinned {sha256.lower()}: refused (not cached)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return got


def local_weights(
    location: str,
    sha256: str | None = None,
    cache: str | os.PathLike | None = None,
    allow_download: bool = True,
) -> str:
    """A local path for `location` (a path, `file://` path, or fsspec URL such as https:// or s3://).
    A URL is looked up in the cache first and downloaded there on first use (atomically, so
    concurrent workers never load a half-written file; checked against `sha256` when pinned).
    Local files are used as they are (`laion-pipe models check` verifies their sha256)."""
    if location.startswith("file://"):
        location = location[len("file://"):]
    if not is_url(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise MissingWeights(f"weights file not found: {path}")
        return str(path)
    target = cache_path(location, cache)
    if target.is_file():
        return str(target)
    if not allow_download:
        raise MissingWeights(f"{location} is not in the model cache {cache_dir(cache)}")
    try:
        download(location, target, sha256)
    except ChecksumMismatch:
        raise
    except Exception as e:
        raise MissingWeights(
            f"{location} is not in the model cache {cache_dir(cache)} and could not be downloaded ({e}). "
            "On a machine with internet run `laion-pipe models fetch WORKFLOW` and point models.cache_dir "
            "(or LAION_PIPE_CACHE) at the folder it fills"
        ) from e
    return str(target)


def read_manifest(cache: str | os.PathLike | None = None) -> dict:
    path = cache_dir(cache) / MANIFEST
    if not path.is_file():
        return {"files": {}}
    return json.loads(path.read_text())


def record(location: str, path: str | os.PathLike, sha256: str, cache: str | os.PathLike | None = None) -> None:
    """Add a fetched file to the cache's manifest (location -> file, size, sha256)."""
    root = cache_dir(cache)
    manifest = read_manifest(cache)
    p = Path(path)
    rel = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    manifest["files"][location] = {
        "path": rel, "bytes": p.stat().st_size, "sha256": sha256,
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    root.mkdir(parents=True, exist_ok=True)
    fsio.write_bytes_atomic(str(root / MANIFEST), json.dumps(manifest, indent=1, sort_keys=True).encode())


def torch_load(path: str, location: str | None = None):
    """torch.load with weights_only=True (a weights file must never be able to run code)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickled nn.Module, or not a torch file at all
        raise ValueError(f"{location or path}: not a tensor state dict loadable with weights_only=True ({e})") from e


def load_state_dict(location: str, sha256: str | None = None, cache: str | os.PathLike | None = None) -> dict:
    """A tensor state dict from a .safetensors or torch file; a {"state_dict": ...} wrapper is
    unwrapped and DataParallel's `module.` prefixes dropped. (Loaders whose publishers nest the
    weights differently, such as the watermark training checkpoint's {"weights": ...}, unwrap
    that themselves.)"""
    path = local_weights(location, sha256, cache)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    obj = torch_load(path, location)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{location}: expected a state dict, got {type(obj).__name__}")
    return {k.removeprefix("module.") if isinstance(k, str) else k: v for k, v in obj.items()}
