"""Decontamination (laion_pipe.train.decontaminate): training never sees a copy of a held-out
image or of an evaluation set's image. The dataset here repeats a few pictures under many keys
(15 distinct pictures, 32 samples), so held-out samples have copies in training; the test finds
them independently (imagehash on the tar's images) and checks what the model was fed."""
from __future__ import annotations

import io
import json
import tarfile

import imagehash
import numpy as np
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


def _quadrants(im) -> "np.ndarray":
    """The mean colour of each quadrant, rounded (numpy on the decoded image)."""
    a = np.asarray(im, dtype=np.float64)
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return np.rint([a[y:y + h, x:x + w].reshape(-1, 3).mean(axis=0) for y in (0, h) for x in (0, w)])


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
    probe_im = Image.open(eval_dir / "probe.png").convert("RGB")
    h = {k: imagehash.phash(im) for k, im in images.items()}
    ph = imagehash.phash(probe_im)
    q = {k: _quadrants(im) for k, im in images.items()}
    pq_ = _quadrants(probe_im)

    def alike(a, b):  # the colour check: every quadrant's mean colour within 12 levels
        return np.abs(a - b).max() <= 12

    # imagehash's pHash within 3 bits and the same colours must go; ours is within a few bits of
    # imagehash per image (tests/test_neardup.py), so what goes beyond that is within 8 bits
    want = {k for k in rest if any(h[k] - h[j] <= 3 and alike(q[k], q[j]) for j in held)
            or (h[k] - ph <= 3 and alike(q[k], pq_))}
    may = {k for k in rest if any(h[k] - h[j] <= 8 for j in held) or h[k] - ph <= 8}
    # the same layout in other colours (a red square beside a held-out yellow one) stays
    told_apart = {k for k in rest if any(h[k] - h[j] <= 3 for j in held)} - want
    assert probe_key in want and 0 < len(want) and told_apart

    wf = workflow_from_dict(train_workflow(run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)),
                                           max_steps=12, batch_size=4, holdout_fraction=HOLDOUT, record_keys=True,
                                           eval_sets=[str(eval_dir)], checkpoint_every=12))
    wf.runner.progress = False
    report = train(str(run), wf)
    assert report.done == 1 and not report.failed, report.failed
    tdir = run / "train" / "t"
    doc = json.loads((tdir / "decontamination.json").read_text())
    removed = {(r["shard"], r["key"]) for r in doc["removed"]}
    assert want <= removed <= may and not removed & told_apart
    assert {r["reason"] for r in doc["removed"]} == {"holdout_copy", "eval_set_copy"} or probe_key in {
        (r["shard"], r["key"]) for r in doc["removed"] if r["reason"] == "holdout_copy"}
    assert report.counts["decontaminated.holdout_copy"] + report.counts.get("decontaminated.eval_set_copy", 0) == len(removed)
    # what the model was fed: no removed key, no held-out key, and every other sample (more than an epoch ran)
    fed = set(json.loads((tdir / "debug" / "rank-0.json").read_text())["keys"]["0"])
    removed_keys = {k for _, k in removed}
    assert not fed & removed_keys and not fed & {k for _, k in held}
    assert fed == {k for _, k in rest} - removed_keys
    assert report.counts["skipped.decontaminated"] >= len(removed)


# --- the URL-list evaluation set, semantic copies on the score embeddings, the fingerprint ----------------


def _parquet_rows(run):
    import pyarrow.parquet as pq

    rows = []
    for p in sorted((run / "dataset" / "en").glob("*.parquet")):
        t = pq.read_table(p, columns=["key", "uid"])
        rows += [(str(p.with_suffix(".tar")), k, u) for k, u in zip(t["key"].to_pylist(), t["uid"].to_pylist())]
    return rows


def _write_embeddings(run, vectors: dict[str, "np.ndarray"]):
    """scores/en/00000.parquet and its embeddings in clip-retrieval's layout, recorded as a done
    score partition (the uids are the dataset's: they join a sample to its embedding)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from shards import record_done

    uids = list(vectors)
    emb = run / "scores" / "en" / "embeddings"
    for sub in ("img_emb", "metadata"):
        (emb / sub).mkdir(parents=True, exist_ok=True)
    keys = [f"{i:09d}" for i in range(len(uids))]
    pq.write_table(pa.table({"key": keys, "uid": uids}), run / "scores" / "en" / "00000.parquet")
    np.save(emb / "img_emb" / "img_emb_00000.npy", np.stack([vectors[u] for u in uids]).astype(np.float16))
    pq.write_table(pa.table({"key": keys, "uid": uids, "url": [""] * len(uids), "caption": [""] * len(uids)}),
                   emb / "metadata" / "metadata_00000.parquet")
    record_done(run, "score", "en-00000", ["scores/en/00000.parquet", "scores/en/embeddings/img_emb/img_emb_00000.npy",
                                           "scores/en/embeddings/metadata/metadata_00000.parquet"])


def test_url_list_eval_sets_and_semantic_copies_on_the_score_embeddings(tmp_path):
    import numpy as np

    from laion_pipe.config import workflow_from_dict
    from laion_pipe.demo.imageserver import ImageServer, static, status
    from laion_pipe.models.clip import load_clip
    from laion_pipe.train.decontaminate import decontaminate

    run = tmp_path / "run"
    write_dataset(run, n=32, shards=4)
    wf = workflow_from_dict(train_workflow(run, model="demo", unet_config=str(tiny_demo_unet_config(tmp_path)),
                                           holdout_fraction=HOLDOUT))
    wf.train.decontaminate_semantic = False
    plain = decontaminate(["en"], str(run), HOLDOUT, [], 4, wf=wf)  # pHash (and the colour check) only
    wf.train.decontaminate_semantic = True
    gone = {(r["shard"], r["key"]) for r in plain["removed"]}
    rows = _parquet_rows(run)
    held = [r for r in rows if is_holdout(r[1], HOLDOUT)]
    kept = [r for r in rows if not is_holdout(r[1], HOLDOUT) and r[:2] not in gone]
    assert held and len(kept) >= 3, (len(held), len(kept))
    a, b, c = kept[:3]

    # the evaluation set: a URL list served on loopback: a copy of training sample c (pHash), a
    # picture unlike any other (its CLIP embedding planted on sample b), and a URL that answers 404
    images = _images(run)
    buf = io.BytesIO()
    images[(c[0], c[1])].save(buf, "PNG")  # the same pixels, another format and URL
    rng = np.random.default_rng(0)
    odd = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    odd_buf = io.BytesIO()
    odd.save(odd_buf, "PNG")
    server = ImageServer().start()
    try:
        urls = [server.route("/copy.png", static(buf.getvalue(), "image/png")),
                server.route("/odd.png", static(odd_buf.getvalue(), "image/png")),
                server.route("/gone.png", status(404))]
        listing = tmp_path / "eval-urls.txt"
        listing.write_text("# evaluation images\n" + "\n".join(urls) + "\n")

        clip = load_clip(wf.models.clip_en)
        odd_emb = clip.encode_images(clip.preprocess(odd)).numpy()[0]
        vectors = {u: v / np.linalg.norm(v) for u, v in ((r[2], rng.normal(size=odd_emb.shape[0])) for r in rows)}
        vectors[a[2]] = vectors[held[0][2]] + rng.normal(scale=1e-3, size=odd_emb.shape[0])  # a copy of a held-out image
        vectors[b[2]] = odd_emb + rng.normal(scale=1e-3, size=odd_emb.shape[0])  # a copy of the evaluation image
        _write_embeddings(run, vectors)
        doc = decontaminate(["en"], str(run), HOLDOUT, [str(listing)], 4, wf=wf)
    finally:
        server.stop()
    why = {(r["shard"], r["key"]): r for r in doc["removed"]}
    assert why[a[:2]]["reason"] == "holdout_semantic_copy" and why[a[:2]]["of"] == f"{held[0][0]}#{held[0][1]}"
    assert why[b[:2]]["reason"] == "eval_set_semantic_copy" and why[b[:2]]["of"] == urls[1]
    assert why[c[:2]]["reason"] == "eval_set_copy" and why[c[:2]]["of"] == urls[0]
    # nothing else: the pHash removals as before, the other samples of c's picture (the world
    # repeats pictures), and random embeddings are no one's copy
    twins = {k for k, im in images.items() if k not in gone and k[1] != c[1] and not is_holdout(k[1], HOLDOUT)
             and np.array_equal(np.asarray(im), np.asarray(images[c[:2]]))}
    assert all(why[k]["reason"] == "eval_set_copy" and why[k]["of"] == urls[0] for k in twins)
    assert set(why) == gone | {a[:2], b[:2], c[:2]} | twins
    assert doc["eval_images"] == len(held) + 2  # the 404 is not an image
    assert doc["semantic"]["training_samples_with_embeddings"] == len(rows) - len(held)
    assert doc["semantic"]["reference_embeddings"] == len(held) + 2
    assert doc["counts"]["holdout_semantic_copy"] == 1 and doc["counts"]["eval_set_semantic_copy"] == 1
    # turned off: the score embeddings are not read
    wf.train.decontaminate_semantic = False
    assert {r["reason"] for r in decontaminate(["en"], str(run), HOLDOUT, [], 4, wf=wf)["removed"]} == {"holdout_copy"}


def test_the_eval_sets_files_are_in_the_training_fingerprint(tmp_path):
    import os

    from laion_pipe.config import workflow_from_dict
    from laion_pipe.train.stage import fingerprint

    run = tmp_path / "run"
    write_dataset(run, n=8, shards=2)
    folder = tmp_path / "eval"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "a.png")
    listing = tmp_path / "urls.txt"
    listing.write_text("http://127.0.0.1:9/a.jpg\n")
    wf = workflow_from_dict(train_workflow(run, model="demo", eval_sets=[str(folder), str(listing)]))
    shards = {"en": sorted(str(p) for p in (run / "dataset" / "en").glob("*.tar"))}
    before = fingerprint(wf, shards)
    assert fingerprint(wf, shards) == before
    Image.new("RGB", (48, 48), (10, 200, 10)).save(folder / "a.png")  # same name, another picture
    os.utime(folder / "a.png", (1, 1))
    changed = fingerprint(wf, shards)
    assert changed != before
    listing.write_text("http://127.0.0.1:9/a.jpg\nhttp://127.0.0.1:9/b.jpg\n")
    assert fingerprint(wf, shards) != changed
    wf.select.neardup.eps = 0.01  # the semantic check's threshold decides what is removed too
    assert fingerprint(wf, shards) != changed
