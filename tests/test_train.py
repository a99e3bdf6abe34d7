"""`laion-pipe train` as a user runs it: the demo model trained a few steps on shards like the
select stage's, its outputs, a rerun that skips, and bad input refused with exit 2 before any
work."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from train_fixtures import (run_cli, run_in_process, same_image, tiny_demo_unet_config, train_command, train_workflow,
                            write_dataset, write_workflow)


@pytest.fixture
def demo_run(tmp_path):
    run = tmp_path / "run"
    write_dataset(run, n=24, shards=2)
    unet = tiny_demo_unet_config(tmp_path)
    wf = write_workflow(tmp_path / "wf.yaml", train_workflow(
        run, model="demo", unet_config=str(unet), max_steps=6, checkpoint_every=3, checkpoints_total_limit=1,
        validation_every=3, validation_prompts=["a red circle on a white background", "a blue square on a white background"],
        validation_steps=3, holdout_fraction=0.25, ema=True, ema_decay=0.5))
    return run, wf


def test_demo_model_trains_through_the_cli(demo_run, capfd):
    from laion_pipe.train.loader import is_holdout
    from laion_pipe.train.sampling import load_generator

    run, wf = demo_run
    res = run_cli([*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "train: 1 done" in res.stderr
    tdir = run / "train" / "t"
    # checkpoints_total_limit=1: only the newest remains
    assert sorted(p.name for p in tdir.glob("checkpoint-*")) == ["checkpoint-6"]
    assert not list(tdir.glob(".tmp-*"))
    for rel in ("final/unet/config.json", "final/scheduler/scheduler_config.json", "final/laion_pipe_model.json",
                "loss.png", "samples/step-000003.png", "samples/step-000006.png"):
        assert (tdir / rel).exists(), rel
    info = json.loads((tdir / "final" / "laion_pipe_model.json").read_text())
    assert info["family"] == "demo" and info["text_encoder"]["model"] == "demo:laion-pipe-demo-clip.json"
    rows = [json.loads(x) for x in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert Image.open(tdir / "samples" / "step-000006.png").size[0] >= 2 * 128
    # holdout.json lists exactly the held-out keys; the run never trained on them
    held = json.loads((tdir / "holdout.json").read_text())
    all_keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(12)]
    assert sorted(held["keys"]) == sorted(k for k in all_keys if is_holdout(k, 0.25))
    assert held["keys"], "the fixture should hold some keys out"
    manifest = json.loads((run / "_state" / "train" / "t.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["steps"] == 6
    assert manifest["counts"]["skipped.holdout"] >= len(held["keys"])
    # same seeds, same images; the grid helper writes what it is given
    gen = load_generator(str(tdir / "final"))
    assert gen.resolution == 16
    a = gen.generate(["a red circle on a white background"] * 2, [3, 4], steps=4, sampler="ddim")
    b = gen.generate(["a red circle on a white background"], [3], steps=4, sampler="ddim")
    assert same_image(a[0], b[0]) and not same_image(a[0], a[1], tol=20)
    assert a[0].size == (16, 16)
    # a rerun with the same data and settings skips (the same command, in this process)
    again = run_in_process(["train", "--out", str(run), "--workflow", str(wf), "--no-progress"], capfd)
    assert again.returncode == 0 and "1 skipped" in again.stderr, again.stderr[-2000:]


def test_save_grid_writes_prompts_under_images(tmp_path):
    from laion_pipe.train.sampling import save_grid

    ims = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    save_grid(ims, ["red one", "blue one", "green one"], str(tmp_path / "g.png"), columns=2)
    g = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert g.shape[1] == 2 * 128 + 3 * 4 and g.shape[0] > 2 * 128  # 2 columns, 2 rows with text under each
    # the first cell is the red image enlarged; under it, dark text pixels on white
    assert tuple(g[10, 10]) == (255, 0, 0)
    assert (g[4 + 128: 4 + 128 + 14, 4: 4 + 128] < 100).any()
    with pytest.raises(ValueError):
        save_grid(ims, ["only one prompt"], str(tmp_path / "bad.png"))


@pytest.mark.parametrize("case", ["missing", "empty", "resolution", "model_path", "typo", "no_run_dir"])
def test_bad_input_exits_2_before_any_work(tmp_path, case):
    run = tmp_path / "run"
    train = {"model": "demo"}
    if case != "missing" and case != "no_run_dir":
        write_dataset(run, n=8, shards=1, size=64)
    if case == "empty":
        import pyarrow as pa
        import pyarrow.parquet as pq
        import webdataset as wds

        folder = run / "dataset" / "empty"
        folder.mkdir(parents=True)
        with open(folder / "00000.tar", "wb") as f, wds.TarWriter(f):
            pass
        pq.write_table(pa.table({"key": pa.array([], pa.string())}), folder / "00000.parquet")
        train["sources"] = ["empty"]
    if case == "resolution":
        train["resolution"] = 128  # images are stored at 64 px
    if case == "model_path":
        train.update(model="sd", pretrained=str(tmp_path / "no-such-pipeline"))
    data = train_workflow(run, **train)
    if case == "typo":
        data["train"]["learning_rat"] = 1e-4
    if case == "no_run_dir":
        run = tmp_path / "mistyped"
        data["out"] = str(run)
    wf = write_workflow(tmp_path / "wf.yaml", data)
    res = run_cli([*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"], timeout=300)
    # a missing dataset is reported by the stage's preflight, or by the CLI's check of the stage before
    missing = ("no shards", "nothing from the select stage")
    expected = {
        "missing": missing, "empty": ("is empty",), "resolution": ("above every",), "model_path": ("does not exist",),
        "typo": ("train.learning_rat: unknown key",), "no_run_dir": missing,
    }[case]
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert any(e in res.stderr.replace("\n", " ") for e in expected), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (run / "train").exists()
    if case == "no_run_dir":
        assert not run.exists()


@pytest.mark.slow
def test_torch_compile_option_trains_and_saves_plain_weights(tmp_path):
    """The GPU path's torch.compile option, on the CPU: the UNet is compiled (here with the eager
    backend, which traces without generating kernels), trains, and final/ holds plain weights."""
    from diffusers import UNet2DConditionModel

    from laion_pipe.config import workflow_from_dict
    from laion_pipe.train.stage import run as run_stage

    run = tmp_path / "run"
    write_dataset(run, n=8, shards=1)
    wf = workflow_from_dict(train_workflow(run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)),
                                           max_steps=2, torch_compile=True, compile_backend="eager"))
    wf.runner.progress = False
    report = run_stage(str(run), wf)
    assert report.done == 1, report.failed
    summary = json.loads((run / "train" / "t" / "summary.json").read_text())
    assert summary["compiled"] is True
    unet = UNet2DConditionModel.from_pretrained(str(run / "train" / "t" / "final" / "unet"))
    assert not any(k.startswith("_orig_mod") for k in unet.state_dict())


def test_more_steps_continue_from_the_last_checkpoint_and_force_starts_over(tmp_path, capfd):
    """A rerun with a larger max_steps continues from the newest checkpoint (the last step is
    always one); --force throws the run away and starts again. The --force run is the console
    command in a subprocess; the others are the same command line through the CLI's `main` in this
    process (a fresh interpreter each would only import torch and diffusers again)."""
    run = tmp_path / "run"
    write_dataset(run, n=8, shards=1)
    data = train_workflow(run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)), max_steps=2,
                          checkpoint_every=100)
    wf = write_workflow(tmp_path / "wf.yaml", data)
    args = ["train", "--out", str(run), "--workflow", str(wf), "--no-progress"]
    res = run_in_process(args, capfd)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = run / "train" / "t" / "summary.json"
    assert json.loads(summary.read_text())["resumed_from"] is None
    res = run_in_process([*args, "--set", "train.max_steps=3"], capfd)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(summary.read_text())
    assert s["resumed_from"] == 2 and s["steps"] == 3
    assert [json.loads(x)["step"] for x in (run / "train" / "t" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    cmd = [*train_command(), "--out", str(run), "--workflow", str(wf), "--no-progress"]
    res = run_cli([*cmd, "--set", "train.max_steps=3", "--force"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(summary.read_text())["resumed_from"] is None
    # a checkpoint of another model is never resumed silently
    res = run_in_process([*args, "--set", "train.max_steps=4", "--set", "train.resolution=8"], capfd)
    assert res.returncode == 1 and "--force" in res.stderr, res.stderr[-2000:]
