"""A training process SIGKILLed after a checkpoint and started again resumes from that checkpoint
and ends with exactly the weights of a run that was never interrupted (deterministic settings:
fixed seeds, loading in the training process)."""
from __future__ import annotations

import json

import pytest

from train_fixtures import (run_cli, run_in_process, sigkill_training_at, tiny_demo_unet_config, train_command, train_workflow, write_dataset,
                            write_workflow)

pytestmark = pytest.mark.slow
STEPS = 30  # a batch of 12 from 40 samples: 10 epochs, the cosine schedule and the EMA all the way through


def _setup(tmp_path, name):
    run = tmp_path / "run"  # one path for both runs: the loader's per-sample draws hash the shard's path
    write_dataset(run, n=40, shards=2)
    wf = write_workflow(tmp_path / f"{name}.yaml", train_workflow(
        run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)), max_steps=STEPS, checkpoint_every=5,
        checkpoints_total_limit=2, batch_size=12, ema=True, ema_decay=0.9, lr_scheduler="cosine", lr_warmup_steps=3,
        caption_dropout=0.2, random_flip=True, center_crop=False, noise_offset=0.05, snr_gamma=5.0))
    return run, wf


def _unet(path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(path)).state_dict()


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, capfd):
    ref_run, ref_wf = _setup(tmp_path, "ref")
    # the uninterrupted reference: the same command in this process (the killed run and the resumed
    # one are console commands in their own processes)
    res = run_in_process(["train", "--out", str(ref_run), "--workflow", str(ref_wf), "--no-progress"], capfd)
    assert res.returncode == 0, res.stderr[-3000:]
    ref_run = ref_run.rename(tmp_path / "ref")

    run, wf = _setup(tmp_path, "killed")
    tdir = run / "train" / "t"
    killed_at = sigkill_training_at([*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"], tdir, 10, poll=0.02)
    assert 10 <= killed_at < STEPS

    res = run_cli([*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tdir / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["resumed_from"] >= killed_at
    # every step logged once, the lines of steps after the checkpoint replaced by the resumed run's
    steps = [json.loads(x)["step"] for x in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    ref_rows = [json.loads(x) for x in (ref_run / "train" / "t" / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in ref_rows]
    for part in ("final/unet", f"checkpoint-{STEPS}/unet", f"checkpoint-{STEPS}/unet_ema"):
        a, b = _unet(ref_run / "train" / "t" / part), _unet(tdir / part)
        different = [k for k in a if not (a[k] == b[k]).all()]
        assert not different, f"{part}: {len(different)} tensors differ, e.g. {different[:3]}"
