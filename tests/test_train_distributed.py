"""Two training processes on the CPU (torchrun, gloo), started by the stage as a user starts it:
both end with identical parameters, and within an epoch they trained on disjoint samples whose
union is the epoch's samples."""
from __future__ import annotations

import json

import pytest

from train_fixtures import run_cli, tiny_demo_unet_config, train_command, train_workflow, write_dataset, write_workflow

pytestmark = pytest.mark.slow


def test_two_cpu_processes_split_the_data_and_agree(tmp_path):
    run = tmp_path / "run"
    write_dataset(run, n=32, shards=4)  # 2 shards per rank, 16 samples each: 4 batches of 4
    wf = write_workflow(tmp_path / "wf.yaml", train_workflow(
        run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)), max_steps=6, checkpoint_every=3,
        record_keys=True, ema=True, launch={"processes_per_node": 2}))
    res = run_cli([*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"])
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-4000:])
    tdir = run / "train" / "t"
    ranks = [json.loads((tdir / "debug" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_digest"] == ranks[1]["param_digest"]
    e0 = [set(r["keys"]["0"]) for r in ranks]
    assert len(ranks[0]["keys"]["0"]) == 16 and len(ranks[1]["keys"]["0"]) == 16  # each sample once per rank
    assert not e0[0] & e0[1]
    assert e0[0] | e0[1] == {f"{s:05d}{i:04d}" for s in range(4) for i in range(8)}
    assert {r["state"]["epoch"] for r in ranks} == {1}  # 6 steps: both ranks went on into epoch 1
    for part in ("final/unet/config.json", "checkpoint-3/train_state-rank1.json", "checkpoint-6/random_states_1.pkl", "loss.png"):
        assert (tdir / part).exists(), part
    summary = json.loads((tdir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples_seen"] == 2 * 6 * 4
    manifest = json.loads((run / "_state" / "train" / "t.json").read_text())
    assert manifest["status"] == "done"
    steps = [json.loads(x)["step"] for x in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
