"""Several training processes on the CPU (torchrun, gloo), started by the stage as a user starts
it (issue 19).

One module fixture starts two trainings at once on this machine, a 2-process and a 3-process
one, each checkpointing after every step with old checkpoints pruned, while something else holds
torchrun's usual port 29500. `device: auto`, a user's default: on a machine without a GPU that
once left every process training alone, all of them writing the same checkpoint folders.
Then: a rank SIGKILLed in the middle of a checkpoint, and the rerun that must end with the
uninterrupted 2-process run's weights.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_fixtures import REPO, run_cli, tiny_demo_unet_config, train_command, train_workflow, write_dataset, write_workflow

pytestmark = pytest.mark.slow

STEPS = 12


def _device() -> str:
    import torch

    # a GPU machine would put two ranks on one device; this file is about gloo on CPUs
    return "cpu" if torch.cuda.is_available() else "auto"


def _workflow(tmp: Path, run: Path, processes: int) -> Path:
    """4 shards of 8 samples, batches of 4, a checkpoint after every step (keep 2), EMA,
    validation grids every 4 steps. No caption dropout or flips: the samples' draws then do not
    depend on the run's path, so runs in different folders train the same."""
    write_dataset(run, n=32, shards=4)
    return write_workflow(tmp / f"{run.name}.yaml", train_workflow(
        run, model="demo", unet_config=str(tiny_demo_unet_config(tmp)), max_steps=STEPS, checkpoint_every=1,
        checkpoints_total_limit=2, ema=True, ema_decay=0.9, caption_dropout=0.0, record_keys=True,
        validation_every=4, validation_prompts=["a red circle on a white background"], validation_steps=2,
        device=_device(), launch={"processes_per_node": processes}))


def _command(run: Path, wf: Path) -> list[str]:
    return [*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _start(run: Path, wf: Path, log: Path, **env: str) -> subprocess.Popen:
    """The stage in a subprocess, its output in files (pipes nobody reads would fill and block it)."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen(_command(run, wf), cwd=REPO, env={**_env(), **env}, stdout=out, stderr=err)


@pytest.fixture(scope="module")
def at_once(tmp_path_factory):
    """Two trainings started at once (2 and 3 processes) while port 29500 is taken."""
    tmp = tmp_path_factory.mktemp("at-once")
    runs = {n: tmp / f"run{n}" for n in (2, 3)}
    wfs = {n: _workflow(tmp, runs[n], n) for n in runs}
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            blocker.bind(("127.0.0.1", 29500))
            blocker.listen()
        except OSError:
            pass  # taken already: all the better
        procs = {n: _start(runs[n], wfs[n], tmp / f"log{n}") for n in runs}
        for p in procs.values():
            p.wait(timeout=540)
    return {n: {"run": runs[n], "tdir": runs[n] / "train" / "t", "rc": procs[n].returncode,
                "stdout": (tmp / f"log{n}.out").read_text(), "stderr": (tmp / f"log{n}.err").read_text()} for n in runs}


def test_two_trainings_at_once_on_one_machine_both_finish(at_once):
    for n, r in at_once.items():
        assert r["rc"] == 0, (n, r["stdout"][-2000:], r["stderr"][-4000:])
        assert json.loads((r["run"] / "_state" / "train" / "t.json").read_text())["status"] == "done"


@pytest.mark.parametrize("processes", [2, 3])
def test_checkpoint_every_step_is_complete_with_every_process_count(at_once, processes):
    r = at_once[processes]
    assert r["rc"] == 0, (r["stdout"][-2000:], r["stderr"][-4000:])
    tdir = r["tdir"]
    summary = json.loads((tdir / "summary.json").read_text())
    assert summary["world_size"] == processes and summary["steps"] == STEPS
    assert summary["samples_seen"] == processes * STEPS * 4
    # pruned to the last two, nothing temporary left, each with every rank's state and one model
    names = sorted(p.name for p in tdir.iterdir() if "checkpoint" in p.name)
    assert names == [f"checkpoint-{STEPS - 1}", f"checkpoint-{STEPS}"]
    for name in names:
        cp = tdir / name
        for rank in range(processes):
            state = json.loads((cp / f"train_state-rank{rank}.json").read_text())
            assert state["step"] == int(name.split("-")[1])
            assert (cp / f"rng-rank{rank}.pt").is_file() and (cp / f"random_states_{rank}.pkl").is_file()
        assert not (cp / f"train_state-rank{processes}.json").exists()
        assert (cp / "unet" / "diffusion_pytorch_model.safetensors").is_file()
        assert (cp / "unet_ema" / "diffusion_pytorch_model.safetensors").is_file()
        assert (cp / "optimizer.bin").is_file() and not (cp / "model.safetensors").exists()
    # every rank ended with the same weights; one metrics line per step; grids once each
    digests = {json.loads((tdir / "debug" / f"rank-{k}.json").read_text())["param_digest"] for k in range(processes)}
    assert len(digests) == 1
    steps = [json.loads(x)["step"] for x in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (tdir / "samples").iterdir()) == [f"step-{s:06d}.png" for s in (4, 8, 12)]
    assert (tdir / "final" / "unet" / "config.json").is_file() and (tdir / "loss.png").is_file()


def test_two_cpu_processes_split_the_data_and_agree(at_once):
    """Within an epoch the ranks trained on disjoint samples whose union is the epoch's."""
    tdir = at_once[2]["tdir"]
    ranks = [json.loads((tdir / "debug" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    e0 = [set(r["keys"]["0"]) for r in ranks]
    assert len(ranks[0]["keys"]["0"]) == 16 and len(ranks[1]["keys"]["0"]) == 16  # each sample once per rank
    assert not e0[0] & e0[1]
    assert e0[0] | e0[1] == {f"{s:05d}{i:04d}" for s in range(4) for i in range(8)}
    assert {r["state"]["epoch"] for r in ranks} == {(STEPS - 1) // 4}  # 4 batches a rank per epoch


def _unet(path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(path)).state_dict()


def test_sigkill_a_rank_mid_checkpoint_then_resume_matches_uninterrupted(at_once, tmp_path):
    ref = at_once[2]
    assert ref["rc"] == 0, ref["stderr"][-4000:]
    run = tmp_path / "run2"
    wf = _workflow(tmp_path, run, 2)
    tdir = run / "train" / "t"
    log = tmp_path / "killed"
    # rank 1 SIGKILLs itself inside the checkpoint of step 7, after accelerate's shared files and
    # before its own state (laion_pipe/train/faults.py): an outside kill could not land there reliably
    killed_at = 7
    proc = _start(run, wf, log, LAION_PIPE_KILL_AT=f"checkpoint:{killed_at}:1")
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()
    assert proc.returncode == 1, err[-3000:]
    assert (tdir / f".tmp-checkpoint-{killed_at}").is_dir() and not (tdir / f"checkpoint-{killed_at}").exists()
    assert (tdir / f"checkpoint-{killed_at - 1}").is_dir() and not (tdir / "final").exists()
    # the run is recorded with the killed rank as its cause, not the SIGTERM torchrun then sent rank 0
    manifest = json.loads((run / "_state" / "train" / "t.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["error"].startswith("training process rank 1: killed by SIGKILL"), manifest["error"]
    assert "failed t: training process rank 1: killed by SIGKILL" in (out + err)[-1000:]  # printed last

    res = run_cli(_command(run, wf))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tdir / "summary.json").read_text())
    assert summary["resumed_from"] == killed_at - 1 and summary["world_size"] == 2
    assert not list(tdir.glob(".tmp-*"))
    ref_rows = [json.loads(x) for x in (ref["tdir"] / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    for part in ("final/unet", f"checkpoint-{STEPS}/unet", f"checkpoint-{STEPS}/unet_ema"):
        a, b = _unet(ref["tdir"] / part), _unet(tdir / part)
        different = [k for k in a if not (a[k] == b[k]).all()]
        assert not different, f"{part}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_a_rank_that_raises_is_what_the_stage_records(tmp_path, monkeypatch, capfd):
    """torchrun's real failure records (the worker's @record error file; the other rank stopped
    by torchrun, or failing in a collective whose peer died): the stage's error is the raising
    rank's, with that rank's traceback, printed last."""
    from laion_pipe.train import stage

    script = tmp_path / "fail.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from torch.distributed.elastic.multiprocessing.errors import record\n"
        "@record\n"
        "def main():\n"
        "    dist.init_process_group('gloo')\n"
        "    if dist.get_rank() == 1:\n"
        "        raise ValueError('rank one has bad data')\n"
        "    t = torch.ones(1000)\n"
        "    while True:\n"
        "        dist.all_reduce(t)\n"
        "main()\n")

    def command(wf, out, workflow, *, root_cause, log_dir, **kw):
        return [sys.executable, "-m", "laion_pipe.train.elastic", "--root-cause", root_cause, "--standalone",
                "--nproc_per_node", "2", "--log-dir", log_dir, str(script)]

    monkeypatch.setattr(stage, "local_command", command)
    monkeypatch.chdir(REPO)
    with pytest.raises(stage.TrainingProcessFailed) as e:
        stage.launch_local(str(tmp_path), None, "", progress=False)
    assert str(e.value) == "training process rank 1: ValueError: rank one has bad data"
    assert "raise ValueError('rank one has bad data')" in e.value.process_traceback
    tail = capfd.readouterr().err.rstrip().splitlines()[-1]
    assert tail == "ValueError: rank one has bad data"  # the traceback comes after torchrun's summary


def test_processes_accelerate_did_not_join_are_refused(monkeypatch):
    from laion_pipe.train.loop import check_world, use_cpu

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="started 2 training processes but accelerate joined 1"):
        check_world(1, "DistributedType.NO")
    check_world(2, "DistributedType.MULTI_CPU")
    assert use_cpu("cpu", 1) and not use_cpu("auto", 1)
    import torch

    assert use_cpu("auto", 2) == (not torch.accelerator.is_available())


def test_a_peer_that_failed_in_a_collective_is_not_the_root_cause(tmp_path):
    """torchrun picks the earliest failure by whole-second timestamps: rank 0 raising "connection
    closed by peer" in a collective can be stamped before the SIGKILL of rank 1 that caused it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from laion_pipe.train.elastic import describe, root_cause

    error_file = tmp_path / "error.json"
    error_file.write_text(json.dumps({"message": {"message": "RuntimeError: [pair.cc:545] Connection closed by peer "
                                                  "[127.0.0.1]:1966", "extraInfo": {"py_callstack": "Traceback ...",
                                                                                    "timestamp": str(int(time.time()) - 1)}}}))
    failures = {0: ProcessFailure(local_rank=0, pid=100, exitcode=1, error_file=str(error_file)),
                1: ProcessFailure(local_rank=1, pid=101, exitcode=-signal.SIGKILL, error_file="<N/A>")}
    first, _ = ChildFailedError("worker", failures).get_first_failure()
    assert first == 0  # torchrun's own pick
    cause = root_cause(failures, first)
    assert cause["rank"] == 1 and cause["signal"] == "SIGKILL"
    assert describe(cause).startswith("rank 1: killed by SIGKILL")
