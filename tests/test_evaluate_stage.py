"""The evaluate stage on a demo model this module trains for a few steps on shards it writes:
outputs, manifest and report, determinism of seeds, prompts files, and bad input before work."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from PIL import Image

from laion_pipe.config import ConfigError
from laion_pipe.demo.run import demo_workflow
from laion_pipe.evaluate import stage
from laion_pipe.models.demo import synth
from laion_pipe.train.loader import is_holdout

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = 0.25
TRAIN = ["train.model=demo", "train.name=tiny", "train.sources=[en]", "train.resolution=32", "train.batch_size=8",
         "train.max_steps=3", "train.num_workers=0", "train.shuffle_buffer=16", f"train.holdout_fraction={HOLDOUT}",
         "train.validation_every=0", "train.checkpoint_every=3", "train.learning_rate=1e-3", "runner.progress=false"]
EVAL = ["evaluate.steps=2", "evaluate.n_prompts=6", "evaluate.images_per_prompt=2", "evaluate.batch_size=8",
        "evaluate.guidance_scale=5.0", "evaluate.sampler=ddim", "evaluate.seed=0"]


def write_dataset(run: Path, shards: int = 2, per_shard: int = 24) -> list[tuple[str, str]]:
    """dataset/en/NNNNN.tar + .parquet as select writes them (64 px demo scenes, matching captions)."""
    rng = np.random.default_rng(0)
    folder = run / "dataset" / "en"
    folder.mkdir(parents=True)
    written = []
    for s in range(shards):
        rows = []
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as tw:
            for i in range(per_shard):
                sample = synth.sample(rng, size=64)
                buf = io.BytesIO()
                sample.image.save(buf, "JPEG", quality=92)
                key = f"{s:05d}{i:04d}"
                meta = {"key": key, "TEXT": sample.caption, "caption": sample.caption, "WIDTH": 64, "HEIGHT": 64,
                        "original_width": 64, "original_height": 64, "similarity": 0.9}
                tw.write({"__key__": key, "jpg": buf.getvalue(), "txt": sample.caption.encode(), "json": orjson.dumps(meta)})
                rows.append(meta)
                written.append((key, sample.caption))
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{s:05d}.parquet")
    return written


def workflow(run: Path, *extra: str):
    return demo_workflow([], str(run), [*TRAIN, *EVAL, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    from laion_pipe.train.stage import run as train

    run = tmp_path_factory.mktemp("eval-run")
    written = write_dataset(run)
    report = train(str(run), workflow(run))
    assert report.complete and report.done == 1, report.failed
    assert (run / "train" / "tiny" / "final").is_dir()
    return run, written


def held_out(written: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, c) for k, c in written if is_holdout(k, HOLDOUT)]


@pytest.mark.slow
def test_evaluate_writes_metrics_grid_manifest_and_report(trained):
    run, written = trained
    report = stage.run(str(run), workflow(run))
    assert (report.done, report.skipped, report.failed) == (1, 0, [])
    m = json.loads((run / "eval" / "tiny" / "metrics.json").read_text())
    held = held_out(written)
    assert len(held) >= 6  # the module's data holds out enough samples for the prompts asked for
    assert m["n_prompts"] == 6 and m["n_images"] == 12 and m["images_per_prompt"] == 2
    assert m["seeds"] == list(range(12))
    assert m["n_real"] == len(held)  # every held-out image, read back through the loader
    assert -1.0 <= m["clip_score"] <= 1.0 and 0.0 <= m["retrieval_top1"] <= 1.0 and m["fd_clip"] >= 0.0
    assert m["retrieval_chance"] == pytest.approx(1 / m["n_distinct_prompts"])
    assert (m["sampler"], m["steps"], m["guidance_scale"], m["resolution"]) == ("ddim", 2, 5.0, 32)
    assert m["model_path"].endswith("train/tiny/final") and m["model"] == "tiny"
    with Image.open(run / "eval" / "tiny" / "grid.png") as grid:
        assert grid.width > 128 and grid.height > 128
    manifest = json.loads((run / "_state" / "evaluate" / "tiny.json").read_text())
    assert manifest["status"] == "done" and "eval/tiny/metrics.json" in manifest["outputs"]
    assert manifest["counts"] == {"images": 12, "prompts": 6, "real_images": len(held)}
    html = (run / "stats" / "report.html").read_text()
    assert "tiny" in html and f"{m['clip_score']:.4f}" in html

    again = stage.run(str(run), workflow(run))  # nothing changed: skipped
    assert (again.done, again.skipped) == (0, 1)
    changed = stage.run(str(run), workflow(run, "evaluate.guidance_scale=2.0"))  # a setting changed: redone
    assert changed.done == 1
    assert json.loads((run / "eval" / "tiny" / "metrics.json").read_text())["guidance_scale"] == 2.0


def test_prompts_come_from_the_held_out_captions_in_key_order(trained):
    run, written = trained
    p = stage.plan(str(run), workflow(run))
    assert p.prompts == [c for _, c in sorted(held_out(written))][:6]


def test_a_model_folder_inside_the_run_finds_its_training_held_out_prompts(trained, monkeypatch):
    """`laion-pipe evaluate --model RUN/train/NAME/final` (or a checkpoint of it), absolute or
    relative to the working directory, is that training's model: its held-out prompts come with it."""
    run, written = trained
    want = [c for _, c in sorted(held_out(written))][:6]
    for model in (run / "train" / "tiny" / "final", run / "train" / "tiny" / "checkpoint-3"):
        p = stage.plan(str(run), workflow(run, "train.name=other", f"evaluate.model={model}"))
        assert p.prompts == want and p.holdout.name == "tiny", model
    monkeypatch.chdir(run.parent)
    p = stage.plan(str(run), workflow(run, "train.name=other", f"evaluate.model={run.name}/train/tiny/final/"))
    assert p.prompts == want and p.label == "tiny"


@pytest.mark.slow
def test_same_seeds_give_the_same_images_and_metrics(trained):
    run, _ = trained
    model = str(run / "train" / "tiny" / "final")
    results = []
    for seed in (0, 0, 7):
        wf = workflow(run, f"evaluate.model={model}", "evaluate.holdout=tiny", f"evaluate.seed={seed}",
                      "evaluate.n_prompts=4", "evaluate.images_per_prompt=1")
        results.append(stage.evaluate(str(run), wf, stage.plan(str(run), wf)))
        results[-1]["grid"] = (run / "eval" / "tiny" / "grid.png").read_bytes()
        results[-1].pop("seconds")
    assert results[0] == results[1]
    assert results[2]["grid"] != results[0]["grid"] and results[2]["clip_score"] != results[0]["clip_score"]


def test_a_prompts_file_gives_the_prompts_and_fd_still_uses_the_held_out_images(trained, tmp_path):
    run, written = trained
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle on a blue background\n\n  a green star on a white background  \n"
                 "a red circle on a blue background\n")
    wf = workflow(run, f"evaluate.prompts={f}", "evaluate.images_per_prompt=1")
    p = stage.plan(str(run), wf)
    assert p.prompts == ["a red circle on a blue background", "a green star on a white background",
                         "a red circle on a blue background"]
    m = stage.evaluate(str(run), wf, p)
    assert m["n_distinct_prompts"] == 2 and m["retrieval_chance"] == pytest.approx(2 / 3)  # the repeated prompt's share
    assert m["n_real"] == len(held_out(written)) and m["fd_clip"] is not None
    assert m["prompts_source"] == f"file {f}"


def test_bad_input_is_a_config_error_before_any_work(trained, tmp_path):
    run, _ = trained
    with pytest.raises(ConfigError, match=r"no trained model at .*train/other/final.*this run has train/tiny"):
        stage.run(str(run), workflow(run, "evaluate.model=other"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    with pytest.raises(ConfigError, match="holds no prompt"):
        stage.run(str(run), workflow(run, f"evaluate.prompts={empty}"))
    with pytest.raises(ConfigError, match="file not found"):
        stage.run(str(run), workflow(run, f"evaluate.prompts={tmp_path / 'missing.txt'}"))
    elsewhere = tmp_path / "copied" / "final"
    shutil.copytree(run / "train" / "tiny" / "final", elsewhere)
    with pytest.raises(ConfigError, match="no held-out prompts"):
        stage.run(str(run), workflow(run, f"evaluate.model={elsewhere}"))  # a folder outside the run: no holdout is implied
    with pytest.raises(ConfigError, match=r"holdout.json does not exist"):
        stage.run(str(run), workflow(run, "evaluate.holdout=nothing"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\n")
    with pytest.raises(ConfigError, match=r"nothing/holdout.json does not exist"):  # named, so it must exist
        stage.run(str(run), workflow(run, "evaluate.holdout=nothing", f"evaluate.prompts={prompts}"))
    p = stage.plan(str(run), workflow(run, f"evaluate.model={elsewhere}", f"evaluate.prompts={prompts}"))
    assert p.holdout is None and p.real_sources == () and "no held-out real images" in p.real_note
    assert not (run / "eval" / "other").exists() and not (run / "_state" / "evaluate" / "other.json").exists()


def test_an_empty_run_has_no_model_to_evaluate(tmp_path):
    with pytest.raises(ConfigError, match="this run has no trained model yet"):
        stage.run(str(tmp_path), workflow(tmp_path))
    assert not (tmp_path / "eval").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "laion_pipe", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    r.stderr = " ".join(r.stderr.split())  # the terminal wraps long messages
    return r


def test_cli_bad_input_exits_2_with_the_message(trained, tmp_path):
    r = _cli("evaluate", "--out", str(tmp_path))  # a run directory without any training
    assert r.returncode == 2 and "train" in r.stderr, r.stderr
    run, _ = trained
    r = _cli("evaluate", "--out", str(run), "--model", "nothing")
    assert r.returncode == 2, r.stderr
    assert "no trained model" in r.stderr and "train/tiny" in r.stderr
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n")
    r = _cli("evaluate", "--out", str(run), "--model", "tiny", "--prompts", str(prompts))
    assert r.returncode == 2 and "holds no prompt" in r.stderr, r.stderr
    r = _cli("evaluate", "--out", str(run), "--set", "evaluate.sampler=nope")
    assert r.returncode == 2 and "evaluate.sampler" in r.stderr, r.stderr
    assert not (run / "eval" / "nothing").exists()


@pytest.mark.slow
def test_cli_evaluates_a_trained_model_as_a_user_runs_it(trained, tmp_path):
    run, _ = trained
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle on a blue background\na green star on a white background\n")
    wf_path = tmp_path / "wf.yaml"
    wf_path.write_text(yaml.safe_dump(workflow(run).model_dump(mode="json")))
    r = _cli("evaluate", "--out", str(run), "--workflow", str(wf_path), "--model", "tiny", "--prompts", str(f),
             "--set", "evaluate.images_per_prompt=1", "--no-progress")
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "eval" / "tiny" / "metrics.json").read_text())
    assert m["prompts_source"] == f"file {f}" and m["n_images"] == 2
    assert "evaluate tiny: CLIP score" in r.stderr


class _Oracle:
    """A "model" that returns the real held-out image of each prompt (at the model's resolution,
    read back through the loader as evaluate reads the real images)."""

    resolution = 32

    def __init__(self, run: Path):
        from laion_pipe.evaluate.prompts import to_pil
        from laion_pipe.train.loader import LoaderSpec, make_loader

        spec = LoaderSpec(sources=("en",), run_dir=str(run), resolution=32, center_crop=True, random_flip=False,
                          caption_dropout=0.0, batch_size=64, shuffle_buffer=0, holdout_fraction=HOLDOUT,
                          holdout="only", num_workers=0)
        self.by_caption: dict[str, list] = {}
        for b in make_loader(spec):
            for cap, im in zip(b["caption"], to_pil(b["pixel_values"].numpy())):
                self.by_caption.setdefault(cap, []).append(im)
        self.used: dict[str, int] = {}

    def generate(self, prompts, seeds, **_):
        out = []
        for p in prompts:  # copies of one caption: each real image once, in order
            i = self.used.get(p, 0)
            self.used[p] = i + 1
            out.append(self.by_caption[p][i % len(self.by_caption[p])])
        return out


class _Constant:
    resolution = 32

    def __init__(self, image):
        self.image = image

    def generate(self, prompts, seeds, **_):
        return [self.image] * len(prompts)


def test_a_generator_of_the_real_held_out_images_scores_near_perfect(trained):
    run, written = trained
    held = held_out(written)
    wf = workflow(run, f"evaluate.n_prompts={len(held)}", "evaluate.images_per_prompt=1")
    p = stage.plan(str(run), wf)
    m = stage.evaluate(str(run), wf, p, generator=_Oracle(run))
    assert m["n_images"] == m["n_real"] == len(held)  # the generated set is the real set
    assert m["retrieval_top1"] >= 0.8 > m["retrieval_chance"]
    assert m["fd_clip"] == pytest.approx(0.0, abs=1e-3) and abs(m["kid_clip"]) < 1e-2
    lo, hi = m["fd_clip_interval"]
    assert 0 <= lo <= hi


def test_a_constant_generator_scores_the_majority_share(trained, tmp_path):
    run, _ = trained
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle on a blue background\na green star on a white background\n"
                 "a red circle on a blue background\na yellow square on a black background\n"
                 "a red circle on a blue background\na white ring on a brown background\n")
    wf = workflow(run, f"evaluate.prompts={f}", "evaluate.images_per_prompt=1")
    scene = synth.Scene("circle", "red", "blue", 0.5, 0.5, 0.35, 0.0, (0,) * 6)
    m = stage.evaluate(str(run), wf, stage.plan(str(run), wf), generator=_Constant(synth.render(scene, 32)))
    assert m["retrieval_chance"] == 0.5  # 3 of 6 prompts are the same text
    assert m["retrieval_top1"] == m["retrieval_chance"]
    assert m["fd_clip"] > 0.05 and m["kid_clip"] > 0
