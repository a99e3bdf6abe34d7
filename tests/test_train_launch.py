"""The train: section's validation, the torchrun command, and the SLURM / PBS job scripts (one
run end to end on this machine with stand-ins for srun and scontrol)."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from train_fixtures import REPO, tiny_demo_unet_config, train_workflow, write_dataset


def _wf(**data):
    from laion_pipe.config import workflow_from_dict

    return workflow_from_dict(data)


@pytest.mark.parametrize("train, message", [
    ({"modle": "demo"}, "train.modle: unknown key"),
    ({"launch": {"gpus": 2}}, "train.launch.gpus: unknown key"),
    ({"model": "sd", "pretrained": None}, "pretrained"),
    ({"sources": ["a", "b"], "weights": [1.0]}, "weights"),
    ({"mixed_precision": "fp8"}, "train.mixed_precision"),
    ({"validation_sampler": "magic"}, "train.validation_sampler"),
    ({"name": "../escape"}, "train.name"),
    ({"lr_scheduler": "warmup_stable_decay"}, "train.lr_scheduler"),
])
def test_bad_train_sections_name_the_key(train, message):
    from laion_pipe.config import ConfigError

    with pytest.raises(ConfigError) as e:
        _wf(train=train)
    assert message in str(e.value)


def test_defaults_are_sd_v1_finetuning():
    t = _wf().train
    assert t.model == "sd" and t.caption_dropout == 0.1 and t.launch.world_size == 1
    assert _wf(train={"launch": {"processes_per_node": 4, "nodes": 2}}).train.launch.world_size == 8


def test_local_command_is_torchrun_on_a_free_port_unless_one_is_set():
    from laion_pipe.train.launch import local_command

    wf = _wf(train={"launch": {"processes_per_node": 3}})
    cmd = local_command(wf, "/r", "/r/train/model/workflow.yaml", python="py")
    assert cmd[:4] == ["py", "-m", "torch.distributed.run", "--standalone"]  # a c10d store on a free port
    assert cmd[cmd.index("--nproc_per_node") + 1] == "3"
    assert cmd[cmd.index("-m", 3) + 1] == "laion_pipe.train.worker" and "--prepared" in cmd
    cmd = local_command(wf, "/r", "/r/w.yaml", python="py", root_cause="/t/cause.json", log_dir="/t/logs")
    assert cmd[:5] == ["py", "-m", "laion_pipe.train.elastic", "--root-cause", "/t/cause.json"]
    assert cmd[cmd.index("--log-dir") + 1] == "/t/logs" and cmd.index("--log-dir") < cmd.index("laion_pipe.train.worker")
    fixed = local_command(_wf(train={"launch": {"processes_per_node": 2, "master_port": 12345}}), "/r", "/r/w.yaml")
    assert "--standalone" not in fixed and fixed[fixed.index("--master-port") + 1] == "12345"


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_job_scripts_find_a_free_port_unless_one_is_set(kind):
    from laion_pipe.train.launch import train_job_script

    script = train_job_script(_wf(out="/r", cluster={"kind": kind}, train={"launch": {"python": "/opt/py"}}))
    line = next(x for x in script.splitlines() if x.startswith("export MASTER_PORT="))
    assert line.startswith("export MASTER_PORT=$(/opt/py -c ") and "bind" in line
    port = subprocess.run(["bash", "-c", line.replace("/opt/py", sys.executable) + "; echo $MASTER_PORT"],
                          capture_output=True, text=True).stdout.strip()
    assert 1024 <= int(port) <= 65535
    with socket.socket() as s:  # free: it can be bound
        s.bind(("", int(port)))
    fixed = train_job_script(_wf(out="/r", cluster={"kind": kind}, train={"launch": {"master_port": 29400}}))
    assert "export MASTER_PORT=29400\n" in fixed


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_job_scripts_are_valid_bash_and_carry_the_workflow(tmp_path, kind):
    import yaml

    from laion_pipe.train.launch import train_job_script

    wf = _wf(out="/scratch/run", cluster={"kind": kind, "jobqueue": {"queue": "gpu", "account": "proj"}},
             train={"name": "sd15", "launch": {"nodes": 2, "processes_per_node": 4, "setup": ["module load cuda"]}})
    script = train_job_script(wf)
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    assert "torch.distributed.run --nnodes" in script and "--nproc_per_node 4" in script and "-m laion_pipe.train.worker" in script
    if kind == "slurm":
        assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=4" in script and "#SBATCH --partition=gpu" in script
        assert "#SBATCH --mem=64G\n" in script and "\nsrun " in script
    else:
        assert "#PBS -l select=2:ncpus=32:ngpus=4:mem=64gb" in script and "#PBS -q gpu" in script and "pbsdsh -u" in script
    # the here-document is the validated workflow
    doc = script.split("<<'LAION_PIPE_WORKFLOW'\n", 1)[1].split("\nLAION_PIPE_WORKFLOW\n", 1)[0]
    data = yaml.safe_load(doc)
    assert data["out"] == "/scratch/run" and data["train"]["name"] == "sd15"
    assert _wf(**data).train == wf.train


def test_job_script_needs_a_batch_system():
    from laion_pipe.train.launch import train_job_script

    with pytest.raises(ValueError, match="train.launch.job"):
        train_job_script(_wf(out="/r"))


@pytest.mark.slow
def test_slurm_job_script_trains_on_this_machine(tmp_path):
    """The printed SLURM script, run with stand-ins for scontrol and srun on one "node" of 2 CPU
    processes: the job does the stage's bookkeeping itself (holdout, manifest, loss curve)."""
    from laion_pipe.config import workflow_from_dict
    from laion_pipe.train.launch import train_job_script

    run = tmp_path / "run"
    write_dataset(run, n=16, shards=2)
    data = train_workflow(run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)), max_steps=3,
                          holdout_fraction=0.2, launch={"job": "slurm", "nodes": 1, "processes_per_node": 2,
                                                        "python": sys.executable})  # the script finds a free port
    script = tmp_path / "job.sh"
    script.write_text(train_job_script(workflow_from_dict(data)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"scontrol": 'echo 127.0.0.1', "srun": 'shift; exec "$@"'}.items():  # srun: drop its option
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": "1", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "node1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(["bash", str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    tdir = run / "train" / "t"
    assert (tdir / "final" / "unet" / "config.json").exists() and (tdir / "loss.png").exists()
    assert json.loads((tdir / "summary.json").read_text())["world_size"] == 2
    assert json.loads((tdir / "holdout.json").read_text())["fraction"] == 0.2
    assert json.loads((run / "_state" / "train" / "t.json").read_text())["status"] == "done"


def test_sd_v1_workflow_curates_for_512_px_and_prints_its_job(tmp_path):
    from laion_pipe.config import load_workflow
    from laion_pipe.recipes import PRESETS
    from laion_pipe.train.launch import train_job_script

    wf = load_workflow(REPO / "workflows" / "sd-v1.yaml")
    d = wf.download
    assert d.min_width >= 512 and d.min_height >= 512 and d.resize_only_if_bigger and d.image_size == 512
    assert set(wf.select.presets) == set(PRESETS)
    t = wf.train
    assert t.model == "sd" and t.resolution == 512 and t.caption_dropout == 0.1 and t.sources[0] in wf.select.presets
    path = tmp_path / "job.sh"
    path.write_text(train_job_script(wf))
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_training_threads_come_from_the_config_the_launcher_or_the_cores(monkeypatch):
    """Not from torch's current setting, which a Dask cluster opened earlier in the process can
    have left at one thread (the demo trains in its driver after curating)."""
    import os

    from laion_pipe.train.loop import cpu_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads(3) == 3
    assert cpu_threads(None) == 1  # torchrun's one thread per process
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads(None) == len(os.sched_getaffinity(0))
