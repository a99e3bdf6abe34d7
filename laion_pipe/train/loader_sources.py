"""Where a training source's shards are, and reading them as WebDataset samples through fsspec.

A source is one of: a recipe name of a run directory (`laion2B-en` means `RUN/dataset/laion2B-en/
*.tar`), a directory of shards, a shard glob (`/data/shards/*.tar`, `s3://bucket/ds/*.tar`), a brace
pattern (`s3://bucket/ds/{00000..00099}.tar`, `https://host/ds/{00000..00009}.tar`: HTTP cannot be
listed, so braces are its only pattern), or a single shard. Shards are listed once, in the
driving process, so a missing or empty source is a clear error before any worker starts.

Shards are opened with fsspec rather than webdataset's `gopen` (which shells out to `curl` for
HTTP and has no S3): the same URLs as every other stage, credentials and `AWS_ENDPOINT_URL`
included. The tar stream is then webdataset's own (`tar_file_expander`, `group_by_keys`).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

import braceexpand
import fsspec
from webdataset import tariterators

from laion_pipe import fsio

_GLOB_CHARS = re.compile(r"[*?\[]")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STREAMED = ("http", "https")


def _protocol(path: str) -> str:
    return path.split("://", 1)[0] if "://" in path else "file"


def is_recipe_name(source: str) -> bool:
    """A bare name (no path separator, scheme, pattern or .tar suffix) names a recipe's dataset."""
    return bool(_NAME.match(source)) and not source.endswith(".tar")


def resolve_source(source: str, run_dir: str | None = None) -> list[str]:
    """The shard paths/URLs of one source, sorted and de-duplicated (a recipe of a run directory:
    the tars of the select stage's current plan). Raises ValueError naming the source when it
    is unknown or holds no shard."""
    if is_recipe_name(source) and not fsio.exists(source):
        if run_dir is None:
            raise ValueError(f"source {source!r} looks like a recipe name, but no run_dir was given to find "
                             f"dataset/{source}/ in")
        from laion_pipe.shards import current_dataset_parquets, dataset_tars

        folder = fsio.join(run_dir, "dataset", source)
        current = current_dataset_parquets(run_dir)
        if current is not None:  # the select stage's current plan, never what lies in the folder
            shards = dataset_tars(run_dir, source)
            names = sorted(current)
        else:  # a dataset folder without its run's state
            shards = fsio.glob(fsio.join(folder, "*.tar"))
            fs, root = fsio.fs_and_path(fsio.join(run_dir, "dataset"))
            names = sorted({p.split("/")[-2] for p in fs.glob(f"{root}/*/*.tar")}) if fs.exists(root) else []
        if not shards:
            known = f" (datasets there: {', '.join(names)})" if names else ""
            raise ValueError(f"source {source!r}: no shards (*.tar) in {folder}{known}")
        return shards
    shards: list[str] = []
    patterns = list(braceexpand.braceexpand(source))
    for pattern in patterns:
        proto = _protocol(pattern)
        if _GLOB_CHARS.search(pattern.split("://", 1)[-1]):
            if proto in _STREAMED:
                raise ValueError(f"source {source!r}: HTTP cannot be listed; write the shards as a brace "
                                 f"pattern instead (e.g. https://host/ds/{{00000..00009}}.tar)")
            shards += [s for s in fsio.glob(pattern) if s.endswith(".tar")]
        elif proto in _STREAMED or (proto != "file" and len(patterns) > 1 and pattern.endswith(".tar")):
            # Not checked one by one (a request each); a missing one is a counted shard_error when read.
            shards.append(pattern)
        elif not fsio.exists(pattern):
            raise ValueError(f"source {source!r}: {pattern} does not exist")
        elif pattern.endswith(".tar"):
            shards.append(pattern)
        else:  # a directory of shards
            shards += fsio.glob(fsio.join(pattern, "*.tar"))
    if not shards:
        raise ValueError(f"source {source!r}: no shards (*.tar) found")
    return sorted(set(shards))


def tar_samples(urls: Iterable[str], on_error: Callable[[Exception], bool]) -> Iterator[dict]:
    """WebDataset samples (`__key__`, `__url__` and one entry per member extension) of each
    shard in turn, each shard opened with fsspec and closed when read. A shard that cannot be
    opened or read is handed to `on_error` (True: go on with the next shard)."""
    for url in urls:
        try:
            kwargs = {"block_size": 0} if _protocol(url) in _STREAMED else {}  # stream, no range requests
            with fsspec.open(url, "rb", **kwargs) as stream:
                files = tariterators.tar_file_expander([{"url": url, "stream": stream}], handler=on_error)
                yield from tariterators.group_by_keys(files, handler=on_error)
        except Exception as e:  # noqa: BLE001 - any I/O failure of one shard goes to the handler
            if not on_error(e):
                raise
