"""Decontamination (laion_pipe.train.decontaminate): training never sees a copy of a held-out
image or of an evaluation set's image. The dataset here repeats a few pictures under many keys
(15 distinct pictures, 32 samples), so held-out samples have copies in training; the test finds
them independently (imagehash on the tar's images) and checks what the model was fed."""
from __future__ import annotations

import io
import json
import tarfile

import imagehash
from PIL import Image

from train_fixtures import tiny_demo_unet_config, train_workflow, write_dataset
from laion_pipe.train.loader import is_holdout

HOLDOUT = 0.25


def _images(run):
    out = {}
    for tar in sorted((run / "dataset" / "en").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".jpg"):
                    out[(str(tar), m.name[:-4])] = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
    return out


def test_training_never_sees_a_copy_of_a_held_out_or_eval_set_image(tmp_path):
    from laion_pipe.config import workflow_from_dict
    from laion_pipe.train.stage import run as train

    run = tmp_path / "run"
    write_dataset(run, n=32, shards=4)
    images = _images(run)
    held = {k: im for k, im in images.items() if is_holdout(k[1], HOLDOUT)}
    rest = {k: im for k, im in images.items() if not is_holdout(k[1], HOLDOUT)}
    assert held and rest
    # an evaluation set: one picture of the training set, saved as PNG in a folder
    eval_dir = tmp_path / "eval-set"
    eval_dir.mkdir()
    probe_key, probe = next((k, im) for k, im in rest.items())
    probe.resize((96, 96)).save(eval_dir / "probe.png")
    h = {k: imagehash.phash(im) for k, im in images.items()}
    ph = imagehash.phash(Image.open(eval_dir / "probe.png").convert("RGB"))
    # imagehash's pHash within 3 bits must go; ours is within a few bits of imagehash per image
    # (tests/test_neardup.py), so what goes beyond that is within 8 bits by imagehash
    want = {k for k in rest if any(h[k] - h[j] <= 3 for j in held) or h[k] - ph <= 3}
    may = {k for k in rest if any(h[k] - h[j] <= 8 for j in held) or h[k] - ph <= 8}
    assert probe_key in want and 0 < len(want)

    wf = workflow_from_dict(train_workflow(run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)),
                                           max_steps=12, batch_size=4, holdout_fraction=HOLDOUT, record_keys=True,
                                           eval_sets=[str(eval_dir)], checkpoint_every=12))
    wf.runner.progress = False
    report = train(str(run), wf)
    assert report.done == 1 and not report.failed, report.failed
    tdir = run / "train" / "t"
    doc = json.loads((tdir / "decontamination.json").read_text())
    removed = {(r["shard"], r["key"]) for r in doc["removed"]}
    assert want <= removed <= may
    assert {r["reason"] for r in doc["removed"]} == {"holdout_copy", "eval_set_copy"} or probe_key in {
        (r["shard"], r["key"]) for r in doc["removed"] if r["reason"] == "holdout_copy"}
    assert report.counts["decontaminated.holdout_copy"] + report.counts.get("decontaminated.eval_set_copy", 0) == len(removed)
    # what the model was fed: no removed key, no held-out key, and every other sample (more than an epoch ran)
    fed = set(json.loads((tdir / "debug" / "rank-0.json").read_text())["keys"]["0"])
    removed_keys = {k for _, k in removed}
    assert not fed & removed_keys and not fed & {k for _, k in held}
    assert fed == {k for _, k in rest} - removed_keys
    assert report.counts["skipped.decontaminated"] >= len(removed)
