"""Work files and temporary files of a run directory: what they are, when they go.

- Work files, `_work/{stage}/`: a stage's intermediate files between its phases (dedup's bucket
  and survivor files, as large as the candidates at LAION-5B scale). A stage deletes its own
  when it completes (`remove_work`) and keeps them while it is incomplete, because resuming
  needs them. Once they are gone, `_state/{stage}/_work_removed.json` says so: the stage then
  knows that a rerun which must redo a phase has to start from its inputs again.
- Temporary files, `.tmp-*` (fsio's atomic writes): left only by a write that was killed; never
  read, always safe to remove.

`laion-pipe clean DIR [--stage S]` removes both (`clean`); `laion-pipe status` says which work
files a run holds (`work_summary`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import fsio
from .schema import STATE_DIR

WORK_ROOT = "_work"


def work_dir(stage: str) -> str:
    """A stage's work folder, relative to the run directory."""
    return f"{WORK_ROOT}/{stage}"


def _marker(stage: str) -> str:
    return f"{STATE_DIR}/{stage}/_work_removed.json"


def work_removed(out: str, stage: str) -> bool:
    """Whether `stage`'s work files were deleted (by the stage on completion, or by `clean`)."""
    return fsio.exists(fsio.join(out, _marker(stage)))


def forget_work_removed(out: str, stage: str) -> None:
    """The stage is rebuilding its work files: drop the marker."""
    fs, p = fsio.fs_and_path(fsio.join(out, _marker(stage)))
    if fs.exists(p):
        fs.rm(p)


def _size(out: str, rel: str) -> tuple[int, int]:
    """(files, bytes) under `out/rel`."""
    fs, p = fsio.fs_and_path(fsio.join(out, rel))
    if not fs.exists(p):
        return 0, 0
    sizes = fs.find(p, detail=True)
    return len(sizes), sum(int(info.get("size") or 0) for info in sizes.values())


def remove_work(out: str, stage: str) -> tuple[int, int]:
    """Delete `stage`'s work folder (if it has one) and record that it is gone; (files, bytes) removed."""
    fs, p = fsio.fs_and_path(fsio.join(out, work_dir(stage)))
    if not fs.exists(p):
        return 0, 0
    files, size = _size(out, work_dir(stage))
    fs.rm(p, recursive=True)
    fsio.write_json_atomic(fsio.join(out, _marker(stage)), {"stage": stage, "removed": time.time(), "files": files, "bytes": size})
    return files, size


@dataclass(frozen=True)
class WorkFiles:
    stage: str
    files: int
    bytes: int


def work_summary(out: str) -> list[WorkFiles]:
    """The work folders a run directory holds now, per stage."""
    fs, p = fsio.fs_and_path(fsio.join(out, WORK_ROOT))
    if not fs.exists(p):
        return []
    found = []
    for entry in sorted(fs.ls(p, detail=False)):
        stage = entry.rstrip("/").rpartition("/")[2]
        files, size = _size(out, work_dir(stage))
        if files:
            found.append(WorkFiles(stage, files, size))
    return found


def temporary_files(out: str) -> list[str]:
    """Leftover `.tmp-*` files anywhere in the run directory (full paths)."""
    fs, p = fsio.fs_and_path(out)
    if not fs.exists(p):
        return []
    return sorted(f for f in fs.find(p) if f.rpartition("/")[2].startswith(fsio.TMP_PREFIX))


def clean(out: str, stage: str | None = None) -> dict[str, int]:
    """Remove what the current plans do not have (`runner.remove_stale`: partitions and files an
    earlier plan left), the work files of `stage` (every stage when None) and the run's
    temporary files. A stage whose work files go before it completed redoes its phases from its
    inputs."""
    from .runner import remove_stale
    from .stages import registry

    removed = {"work_files": 0, "work_bytes": 0, "temporary_files": 0, "stale_partitions": 0, "stale_files": 0}
    for name in [stage] if stage else registry.names():
        found = remove_stale(out, name)
        removed["stale_partitions"] += len(found.manifests)
        removed["stale_files"] += len(found.files)
    stages = [stage] if stage else [w.stage for w in work_summary(out)]
    for s in stages:
        files, size = remove_work(out, s)
        removed["work_files"] += files
        removed["work_bytes"] += size
    fs, _ = fsio.fs_and_path(out)
    for tmp in temporary_files(out):
        fs.rm(tmp)
        removed["temporary_files"] += 1
    return removed
