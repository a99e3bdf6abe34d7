"""The score stage on small img2dataset shards, with tiny random-weight models through the real loaders."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from shards import Pair, draw_image, synthetic_pairs, tiny_models_config, write_shard

from laion_pipe.config import workflow_from_dict
from laion_pipe.models.aesthetic import load_aesthetic
from laion_pipe.models.clip import cached_clip
from laion_pipe.models.scorer import load_models
from laion_pipe.schema import SCORE_SCHEMA
from laion_pipe.shards import iter_tar_samples
from laion_pipe.stages import score


@pytest.fixture(scope="module")
def models_cfg(tmp_path_factory) -> dict:
    return tiny_models_config(tmp_path_factory.mktemp("tiny-models"))


def make_wf(models_cfg: dict, **score) -> object:
    return workflow_from_dict(
        {"models": models_cfg, "runner": {"progress": False}, "score": {"batch_size": 4, "decode_threads": 2, **score}}
    )


def run_one(out, wf, subset="en", shard="00000"):
    part = next(p for p in score.plan(str(out), wf) if p.key == f"{subset}-{shard}")
    outcome = score.process(part, str(out), wf)
    table = pq.read_table(out / "scores" / subset / f"{shard}.parquet")
    return outcome, table


def test_similarity_equals_hand_computed_cosine(tmp_path, models_cfg):
    pairs = synthetic_pairs(9, seed=1)
    write_shard(tmp_path, "en", 0, pairs)
    wf = make_wf(models_cfg)
    outcome, table = run_one(tmp_path, wf)
    assert table.schema.equals(SCORE_SCHEMA)
    assert table["status"].to_pylist() == ["ok"] * 9 and outcome.kept["en"] == 9

    # by hand: decode the tar's images, the model's own preprocessing and encoders, a dot product
    clip = cached_clip(wf.models.clip_en, "cpu")
    images = [Image.open(io.BytesIO(s["jpg"])).convert("RGB") for s in iter_tar_samples(str(tmp_path / "images/en/00000.tar"))]
    img = clip.encode_images(torch.stack([clip.preprocess(im) for im in images]))
    txt = clip.encode_texts([p.text for p in pairs])
    assert torch.allclose(img.norm(dim=-1), torch.ones(9), atol=1e-5)
    expected = (img * txt).sum(-1).numpy()
    np.testing.assert_allclose(table["similarity"].to_numpy(), expected, atol=1e-5)
    # the heads read that embedding (aesthetic's CLIP is the same tiny model here)
    aes = load_aesthetic(wf.models.aesthetic, clip).score(img)
    np.testing.assert_allclose(table["aesthetic"].to_numpy(), aes, atol=1e-5)
    for col in ("punsafe", "pwatermark"):
        v = table[col].to_numpy()
        assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all()
    assert len(set(np.round(table["similarity"].to_numpy(), 6))) > 1  # per-image values, not one broadcast number


def test_bad_records_get_a_reason_not_a_crash(tmp_path, models_cfg):
    good = synthetic_pairs(5, seed=2)
    truncated = Pair("a cut-off jpeg", b"")
    full = io.BytesIO()
    draw_image("red", "square", size=64).save(full, format="JPEG")
    truncated.image = full.getvalue()[: len(full.getvalue()) // 2]
    pairs = [good[0], Pair("not an image", b"<html>404</html>"), good[1], truncated, Pair("failed download", None), *good[2:]]
    write_shard(tmp_path, "en", 0, pairs)
    outcome, table = run_one(tmp_path, make_wf(models_cfg))
    by_key = {r["key"]: r for r in table.to_pylist()}
    assert len(by_key) == 7  # the failed download has no score row: download counted it
    bad = [by_key["000000001"], by_key["000000003"]]
    assert all(r["status"] == "score_error" and r["error_message"] and np.isnan(r["similarity"]) for r in bad)
    assert sum(r["status"] == "ok" for r in by_key.values()) == 5
    assert outcome.drops["en"]["score_error"] == 2 and outcome.kept["en"] == 5
    assert outcome.counts["bad_records.decode_error"] == 2


def test_empty_shard_and_shard_without_downloads(tmp_path, models_cfg):
    write_shard(tmp_path, "multi", 0, [])
    write_shard(tmp_path, "multi", 1, [Pair("x", None), Pair("y", None)])
    wf = make_wf(models_cfg)
    for shard in ("00000", "00001"):
        outcome, table = run_one(tmp_path, wf, "multi", shard)
        assert table.num_rows == 0 and table.schema.equals(SCORE_SCHEMA)
        assert outcome.kept["multi"] == 0 and not outcome.drops.get("multi")


def test_truncated_tar_scores_what_it_can(tmp_path, models_cfg):
    tar, _ = write_shard(tmp_path, "en", 0, synthetic_pairs(8, seed=3))
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2])
    outcome, table = run_one(tmp_path, make_wf(models_cfg))
    status = table["status"].to_pylist()
    assert 0 < status.count("ok") < 8 and status.count("score_error") == 8 - status.count("ok")
    assert outcome.counts["bad_records.tar_unreadable"] == 1
    assert status[0] == "ok" and status[-1] == "score_error"  # the rows before the cut were scored


def test_identical_captions_are_encoded_once(tmp_path, models_cfg, monkeypatch):
    captions = ["product photo", "a red circle", "product photo", "image", "image", "product photo", "image", "a red circle"]
    pairs = [Pair(c, draw_image("red", "circle")) for c in captions]
    write_shard(tmp_path, "en", 0, pairs)
    wf = make_wf(models_cfg)
    clip = cached_clip(wf.models.clip_en, "cpu")
    seen: list[str] = []
    original = type(clip).encode_texts

    def spy(self, texts, batch_size=256):
        seen.extend(texts)
        return original(self, texts, batch_size)

    load_models(wf, "en")  # loading encodes the zero-shot NSFW prompts: not the captions
    monkeypatch.setattr(type(clip), "encode_texts", spy)
    outcome, table = run_one(tmp_path, wf)
    assert sorted(seen) == ["a red circle", "image", "product photo"]
    assert outcome.counts["unique_captions"] == 3
    sims = dict(zip(table["key"].to_pylist(), table["similarity"].to_pylist()))
    # same image, same caption -> same similarity; each row still got its own caption's embedding
    assert sims["000000000"] == pytest.approx(sims["000000002"], abs=1e-6)
    assert sims["000000001"] == pytest.approx(sims["000000007"], abs=1e-6)


def test_decoding_overlaps_with_model_compute(tmp_path, models_cfg, monkeypatch):
    """Slow both sides down and record when each runs: decode work must happen while the model
    is busy with an earlier batch."""
    write_shard(tmp_path, "en", 0, synthetic_pairs(32, seed=4))
    wf = make_wf(models_cfg, batch_size=4, decode_threads=2, prefetch_batches=1)  # at most ~3 batches ahead
    models = load_models(wf, "en")
    decode_spans, model_spans = [], []
    lock = threading.Lock()
    real_decode = score._decode

    def slow_decode(data, pre):
        t0 = time.perf_counter()
        time.sleep(0.01)
        res = real_decode(data, pre)
        with lock:
            decode_spans.append((t0, time.perf_counter()))
        return res

    real_score = type(models).score_images
    threads_before = torch.get_num_threads()

    def slow_score(self, tensors, text_emb):
        t0 = time.perf_counter()
        time.sleep(0.05)
        res = real_score(self, tensors, text_emb)
        model_spans.append((t0, time.perf_counter()))
        return res

    monkeypatch.setattr(score, "_decode", slow_decode)
    monkeypatch.setattr(type(models), "score_images", slow_score)
    outcome, table = run_one(tmp_path, wf)
    assert table["status"].to_pylist() == ["ok"] * 32 and len(model_spans) == 8
    overlapping = [d for d in decode_spans if any(m0 < d[0] < m1 for m0, m1 in model_spans)]
    assert len(overlapping) >= 4, (decode_spans, model_spans)
    assert torch.get_num_threads() == threads_before  # decode threads went single-threaded, not the model


def test_embeddings_in_clip_retrieval_layout(tmp_path, models_cfg):
    pairs = synthetic_pairs(6, seed=5)
    pairs.insert(2, Pair("broken", b"nope"))
    write_shard(tmp_path, "en", 0, pairs)
    wf = make_wf(models_cfg, save_embeddings=True)
    outcome, table = run_one(tmp_path, wf)
    root = tmp_path / "scores/en/embeddings"
    img = np.load(root / "img_emb/img_emb_00000.npy")
    txt = np.load(root / "text_emb/text_emb_00000.npy")
    meta = pq.read_table(root / "metadata/metadata_00000.parquet")
    assert img.dtype == np.float16 and img.shape == txt.shape == (6, 32) and meta.num_rows == 6
    assert set(meta.column_names) >= {"key", "uid", "url", "caption"}
    # row i of each file is the same pair: its stored similarity is the dot product of the two
    sims = dict(zip(table["key"].to_pylist(), table["similarity"].to_pylist()))
    dots = (img.astype(np.float32) * txt.astype(np.float32)).sum(1)
    np.testing.assert_allclose(dots, [sims[k] for k in meta["key"].to_pylist()], atol=5e-3)
    assert "000000002" not in meta["key"].to_pylist()
    assert sorted(outcome.outputs) == sorted(
        ["scores/en/00000.parquet", "scores/en/embeddings/img_emb/img_emb_00000.npy",
         "scores/en/embeddings/text_emb/text_emb_00000.npy", "scores/en/embeddings/metadata/metadata_00000.parquet"]
    )


def test_en_uses_clip_en_and_the_others_clip_multi(tmp_path, models_cfg):
    import json
    from pathlib import Path

    small = json.loads(Path(models_cfg["clip_en"]["model"]).read_text())
    small["embed_dim"] = 16
    path = tmp_path / "tiny-clip-multi-test.json"
    path.write_text(json.dumps(small))
    cfg = {**models_cfg, "clip_multi": {"model": str(path), "pretrained": None}}
    wf = make_wf(cfg, save_embeddings=True)
    for subset in ("en", "multi", "nolang"):
        write_shard(tmp_path, subset, 0, synthetic_pairs(3, seed=6))
        run_one(tmp_path, wf, subset)
        dim = np.load(tmp_path / f"scores/{subset}/embeddings/img_emb/img_emb_00000.npy").shape[1]
        assert dim == (32 if subset == "en" else 16), subset


def test_fingerprint_follows_models_not_thresholds_or_batching(tmp_path, models_cfg):
    write_shard(tmp_path, "en", 0, synthetic_pairs(2))
    base = make_wf(models_cfg)
    fp = score.plan(str(tmp_path), base)[0].fingerprint
    same = workflow_from_dict(
        {**base.model_dump(mode="json"), "select": {"similarity": {"en": 0.9, "multi": 0.1, "nolang": 0.1}, "max_punsafe": 0.2},
         "score": {"batch_size": 7, "device": "cpu"}}
    )
    assert score.plan(str(tmp_path), same)[0].fingerprint == fp
    other = workflow_from_dict({**base.model_dump(mode="json"), "models": {**models_cfg, "watermark": {**models_cfg["watermark"], "image_size": 96}}})
    assert score.plan(str(tmp_path), other)[0].fingerprint != fp


def test_gpu_resource_request():
    wf = workflow_from_dict({})
    assert score.resources(wf) is None
    assert score.resources(workflow_from_dict({"cluster": {"gpus_per_worker": 1}})) == {"GPU": 1}
    assert score.resources(workflow_from_dict({"cluster": {"kind": "slurm", "jobqueue": {"gpus_per_job": 2}}})) == {"GPU": 1}
    assert score.resources(workflow_from_dict({"score": {"request_gpu": True}})) == {"GPU": 1}
    assert score.resources(workflow_from_dict({"cluster": {"gpus_per_worker": 1}, "score": {"request_gpu": False}})) is None


def test_run_on_a_dask_client(tmp_path, models_cfg, dask_client):
    write_shard(tmp_path, "en", 0, synthetic_pairs(5, seed=7))
    write_shard(tmp_path, "en", 1, synthetic_pairs(3, seed=8))
    write_shard(tmp_path, "multi", 0, synthetic_pairs(4, seed=9, unique_captions=False))
    wf = make_wf(models_cfg)
    report = score.run(str(tmp_path), wf, dask_client)
    assert report.complete and report.done == 3 and report.kept == {"en": 8, "multi": 4}
    again = score.run(str(tmp_path), wf, dask_client)
    assert again.done == 0 and again.skipped == 3 and again.kept == {"en": 8, "multi": 4}
    assert pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "scores").glob("*/*.parquet"))]).num_rows == 12


def test_planning_with_a_custom_clip_config_needs_no_open_clip_and_still_checks_the_file(tmp_path):
    """The plan's model identity (every `run`/`score` command's driver computes it) reads a
    custom model-config JSON without importing open_clip, which costs seconds per command; a
    broken config file is still a configuration error before any work."""
    import subprocess
    import sys

    from laion_pipe.config import ConfigError
    from laion_pipe.demo.run import demo_workflow
    from laion_pipe.models.scorer import model_identity

    code = ("import sys; from laion_pipe.demo.run import demo_workflow; from laion_pipe.models.scorer import model_identity; "
            "ident = model_identity(demo_workflow([], 'unused'), 'en'); assert ident['clip']['model'].endswith('.json'); "
            "print('open_clip' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
    broken = tmp_path / "broken-clip.json"
    broken.write_text('{"embed_dim": 8, "vision_cfg": {}}')
    wf = demo_workflow([], str(tmp_path), [f"models.clip_en.model={broken}"])
    with pytest.raises(ConfigError, match=r"missing keys \['text_cfg'\]"):
        model_identity(wf, "en")
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read JSON"):
        model_identity(wf, "en")
