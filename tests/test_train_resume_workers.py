"""Kill-and-resume with 2 DataLoader workers in an epoch's tail: shards of 60 and 6 samples, so
one worker runs out after its second batch and the other hands out the rest of the epoch alone.
The training process is SIGKILLed after a checkpoint there and started again; the keys it feeds
the model from then on are exactly those the uninterrupted run fed after that point (none
replayed, none skipped), and the losses and weights match."""
from __future__ import annotations

import json

import pytest

from train_fixtures import (run_cli, run_in_process, sigkill_training_at, tiny_demo_unet_config, train_command, train_workflow, write_dataset,
                            write_workflow)

pytestmark = pytest.mark.slow
SIZES = [60, 6]  # batches of 4: 15 from one shard's worker, 2 (4 + 2) from the other's
BATCH = 4
TAIL_FROM = 14  # samples of an epoch after which the short shard's worker is exhausted (4 + 4 + 4 + 2)
STEPS = 20


def _setup(tmp_path, name):
    run = tmp_path / "run"  # one path for both runs: the loader's per-sample draws hash the shard's path
    write_dataset(run, sizes=SIZES)
    wf = write_workflow(tmp_path / f"{name}.yaml", train_workflow(
        run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)), max_steps=STEPS, checkpoint_every=2,
        checkpoints_total_limit=3, batch_size=BATCH, num_workers=2, shuffle_buffer=8, caption_dropout=0.2,
        random_flip=True, record_keys=True))
    return run, wf


def _keys(tdir) -> dict[int, list[str]]:
    doc = json.loads((tdir / "debug" / "rank-0.json").read_text())
    return {int(e): k for e, k in doc["keys"].items()}


def test_sigkill_in_the_tail_of_an_epoch_with_two_workers_resumes_without_replay_or_skip(tmp_path, capfd):
    ref_run, ref_wf = _setup(tmp_path, "ref")
    # the uninterrupted reference: the same command in this process (the killed run and the resumed
    # one are console commands in their own processes)
    res = run_in_process(["train", "--out", str(ref_run), "--workflow", str(ref_wf), "--no-progress"], capfd)
    assert res.returncode == 0, res.stderr[-3000:]
    ref_run = ref_run.rename(tmp_path / "ref")
    ref = _keys(ref_run / "train" / "t")
    every = sorted(ref[0])
    assert len(every) == sum(SIZES) and len(set(every)) == len(every)  # a whole epoch, each sample once
    assert len(set(ref[1])) == len(ref[1]) and set(ref[1]) < set(every)  # then part of the next

    run, wf = _setup(tmp_path, "killed")
    tdir = run / "train" / "t"
    killed_at = sigkill_training_at([*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"], tdir, 6, poll=0.01)
    state = json.loads((tdir / f"checkpoint-{killed_at}" / "train_state-rank0.json").read_text())
    epoch, cut = state["epoch"], state["samples_in_epoch"]
    # the cut is in the tail: the short shard's worker is done, and the state says where each worker stands
    assert TAIL_FROM <= cut < sum(SIZES), state
    assert sorted(state["worker_batches"]) == [2, (cut - 6) // BATCH], state

    res = run_cli([*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tdir / "summary.json").read_text())
    assert summary["resumed_from"] == killed_at
    fed = _keys(tdir)  # the resumed process's record: from the checkpoint on
    assert fed[epoch] == ref[epoch][cut:], "replayed or skipped samples after the restart"
    for e in ref:
        if e > epoch:
            assert fed[e] == ref[e], e
    ref_rows = [json.loads(x) for x in (ref_run / "train" / "t" / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    from diffusers import UNet2DConditionModel

    a = UNet2DConditionModel.from_pretrained(str(ref_run / "train" / "t" / "final" / "unet")).state_dict()
    b = UNet2DConditionModel.from_pretrained(str(tdir / "final" / "unet")).state_dict()
    assert all((a[k] == b[k]).all() for k in a)
