"""The `train:` section as the training loader's `LoaderSpec`, and the epochs a rank walks through.

Each rank walks its own sequence of epochs: when its loader runs out it starts the next epoch
at once. Every rank still takes exactly one batch per micro-step, so all ranks make the same
number of optimiser steps (no rank waits at an all-reduce for a rank that has finished its
epoch), and within any epoch the ranks' samples are disjoint because the loader splits the
shards by rank. The data position (epoch, samples taken in it) is part of every checkpoint.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from .checkpoint import RankState
from .. import fsio
from .decontaminate import FILE as DECONTAMINATION
from .decontaminate import excluded
from .loader import LoaderSpec, Position, ResumePlan, SampleFilter, loader_of, make_pipeline


def loader_spec(wf, out: str, *, holdout: str = "exclude") -> LoaderSpec:
    cfg = wf.train
    return LoaderSpec(
        sources=tuple(cfg.sources),
        weights=tuple(cfg.weights) if cfg.weights is not None else None,
        run_dir=out,
        resolution=cfg.resolution,
        center_crop=cfg.center_crop,
        random_flip=cfg.random_flip,
        filters=SampleFilter(**cfg.filters.model_dump()),
        aspect_buckets=cfg.aspect_buckets,
        caption_dropout=cfg.caption_dropout,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer,
        holdout_fraction=cfg.holdout_fraction,
        holdout=holdout,
        num_workers=cfg.num_workers,
        exclude=excluded(fsio.join(out, "train", cfg.name, DECONTAMINATION)) if holdout == "exclude" else frozenset(),
    )


class EmptyEpoch(RuntimeError):
    """A rank's whole epoch gave no sample (everything filtered or undecodable)."""


def epoch_batches(spec: LoaderSpec, state: RankState, *, rank: int, world_size: int,
                  tokenize: Callable | None) -> Iterator[dict]:
    """Batches forever, epoch after epoch, starting at `state`'s data position and keeping it up
    to date: `state.samples_in_epoch` counts the samples of the batches handed out, and with
    several loader workers `state.worker_batches` / `next_worker` each worker's batches (the
    loader's `Position`), so a checkpoint taken between two batches resumes with the next one
    without replaying the epoch in this process."""
    workers = max(spec.num_workers, 1)
    while True:
        saved = None
        if workers > 1 and state.samples_in_epoch and state.worker_batches and len(state.worker_batches) == workers:
            saved = ResumePlan(state.next_worker, tuple(state.worker_batches))
        stream = make_pipeline(spec, tokenize=tokenize, rank=rank, world_size=world_size,
                               epoch=state.epoch, start_sample=state.samples_in_epoch, plan=saved)
        plan = stream.plan  # the saved one, or the one replaying found (None: one worker, or the epoch's start)
        position = Position(list(plan.skip), plan.first) if plan is not None else Position.start(workers)
        got = False
        for batch in loader_of(stream):
            got = True
            state.samples_in_epoch += len(batch["key"])
            position.take(batch)
            state.worker_batches, state.next_worker = list(position.batches), position.next_worker
            yield batch
        if not got and state.samples_in_epoch == 0:
            raise EmptyEpoch(
                f"rank {rank}: epoch {state.epoch} gave no sample (every sample was filtered out, held out or "
                "undecodable; see the filters of the train: section)"
            )
        state.epoch += 1
        state.samples_in_epoch = 0
        state.worker_batches, state.next_worker = None, 0
