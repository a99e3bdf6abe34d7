"""Checkpoints: written atomically, found again after a kill, pruned to a limit.

A checkpoint is `train/{name}/checkpoint-{step}/`: accelerate's `save_state` (optimizer, LR
scheduler, gradient scaler, every process's RNG states), the UNet (and its EMA) in diffusers'
`save_pretrained` layout so the folder also loads as a model (`sampling.load_generator`), the
noise scheduler, `laion_pipe_model.json`, and one `train_state-rank{r}.json` + `rng-rank{r}.pt`
per process: the step, the data position of that rank (epoch, samples taken in it, and with
several loader workers the batches each handed out) and the state of the generator that draws
its noise and timesteps.

Who writes what: the UNet, its EMA, the scheduler, the model info, the optimizer, LR scheduler and
scaler are one copy shared by all ranks and are written by the main process only (as diffusers'
training scripts guard their save hooks, and accelerate's `save_state` its own files); every
rank writes its own RNG states (accelerate's `random_states_{r}.pkl`, our `rng-rank{r}.pt`) and
data position (`train_state-rank{r}.json`).

Every process writes into `.tmp-checkpoint-{step}/`; once all have written (a barrier), the main
process alone renames it to `checkpoint-{step}` and prunes old checkpoints, and no rank goes on
before it is done (a second barrier). A kill at any moment therefore leaves either a complete
checkpoint or a temporary folder that the next start removes, never a half checkpoint under a
final name; a resumed job starts from the checkpoint the main process picked. This assumes the
training directory is on a file system every node sees, as accelerate's own multi-node
checkpoints do.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class RankState:
    """Where one process stands: resumed exactly from a checkpoint."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # this rank's current epoch of the data
    samples_in_epoch: int = 0  # samples this rank took from the loader in that epoch
    samples_seen: int = 0  # samples this rank trained on since the start
    worker_batches: list[int] | None = None  # batches each loader worker handed out in that epoch (loader.Position)
    next_worker: int = 0  # the loader worker whose batch comes next

    def to_json(self) -> dict:
        return asdict(self)


def checkpoints(train_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a training folder, oldest first."""
    d = Path(train_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(train_dir: str | Path) -> tuple[int, Path] | None:
    cps = checkpoints(train_dir)
    return cps[-1] if cps else None


def remove_partial(train_dir: str | Path) -> list[Path]:
    """Remove temporary checkpoint folders a killed run left (main process, before training)."""
    d = Path(train_dir)
    removed = []
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def prune(train_dir: str | Path, limit: int | None) -> list[Path]:
    """Keep the newest `limit` checkpoints (None: all)."""
    if limit is None:
        return []
    cps = checkpoints(train_dir)
    doomed = [p for _, p in cps[: max(0, len(cps) - limit)]]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def tmp_dir(train_dir: str | Path, step: int) -> Path:
    return Path(train_dir) / f"{TMP_PREFIX}{step}"


def final_dir(train_dir: str | Path, step: int) -> Path:
    return Path(train_dir) / f"{PREFIX}{step}"


def write_rank_state(folder: Path, rank: int, state: RankState, generator: torch.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(generator.get_state(), folder / f"rng-rank{rank}.pt")
    (folder / f"train_state-rank{rank}.json").write_text(json.dumps(state.to_json()))


def read_rank_state(folder: Path, rank: int) -> tuple[RankState, torch.Tensor]:
    f = folder / f"train_state-rank{rank}.json"
    if not f.is_file():
        raise FileNotFoundError(
            f"{folder} has no state for rank {rank}: it was written by a job with fewer processes; "
            "resume with the same number of processes, or start again with --force"
        )
    state = RankState(**json.loads(f.read_text()))
    rng = torch.load(folder / f"rng-rank{rank}.pt", weights_only=True)
    return state, rng


def publish(tmp: Path, dest: Path, world_size: int = 1) -> None:
    """Rename a finished temporary checkpoint into place (main process, after the barrier that
    every rank reaches once it has written its files). A folder missing a rank's state is not
    published: resuming from it would fail or, worse, restart that rank's data."""
    missing = [r for r in range(world_size) if not (tmp / f"train_state-rank{r}.json").is_file()]
    if missing:
        raise RuntimeError(f"{tmp}: no state from rank(s) {missing}; not publishing an incomplete checkpoint")
    if dest.exists():  # the same step written before (a kill after the rename): moved aside, then removed
        old = tmp.with_name(f"{tmp.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, dest)
