"""score -> select through `run(...)` on a Dask client: a changed threshold reruns select only;
and, with the shipped demo models, the scores written by the stage really discriminate."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from shards import Pair, synthetic_pairs, tiny_models_config, write_shard

from laion_pipe.config import workflow_from_dict
from laion_pipe.stages import score, select


def test_changing_a_threshold_reruns_select_not_score(tmp_path, dask_client):
    for shard in range(2):
        write_shard(tmp_path, "en", shard, synthetic_pairs(6, seed=shard))
    write_shard(tmp_path, "multi", 0, synthetic_pairs(4, seed=7))
    base = {"models": tiny_models_config(tmp_path / "models"), "runner": {"progress": False}, "score": {"batch_size": 4}}
    wf = workflow_from_dict(base)
    s1 = score.run(str(tmp_path), wf, dask_client)
    assert s1.complete and s1.done == 3
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "scores").glob("*/*.parquet")}
    sims = np.concatenate([pq.read_table(p)["similarity"].to_numpy() for p in sorted(mtimes)])
    # random weights: put the EN threshold between the scores so that it matters
    low, high = float(np.min(sims)) - 1, float(np.median(sims))
    wf_low = workflow_from_dict({**base, "select": {"similarity": {"en": low, "multi": low, "nolang": low}}})
    sel1 = select.run(str(tmp_path), wf_low, dask_client)
    assert sel1.kept == {"en": 12, "multi": 4}

    wf_high = workflow_from_dict({**base, "select": {"similarity": {"en": high, "multi": low, "nolang": low}}})
    s2 = score.run(str(tmp_path), wf_high, dask_client)
    assert s2.done == 0 and s2.skipped == 3  # the models did not run again
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    sel2 = select.run(str(tmp_path), wf_high, dask_client)
    assert 0 < sel2.kept["en"] < 12 and sel2.kept["multi"] == 4
    assert sel2.done == 1 and sel2.skipped == 2  # en redone; multi, nolang kept
    assert sel2.drops["en"]["low_similarity"] == 12 - sel2.kept["en"]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC as the probability that a positive outranks a negative (ties count half)."""
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _demo_models():
    """The shipped demo models' config; skips while their weights are not in the tree yet."""
    from pathlib import Path

    try:
        from laion_pipe.models import demo_models_config

        cfg = demo_models_config()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"demo models not available: {e}")
    files = [cfg.clip_en.model, cfg.clip_en.pretrained, cfg.nsfw.weights, cfg.watermark.weights, cfg.aesthetic.weights]
    missing = [f for f in files if f and not Path(f).is_file()]
    if missing:
        pytest.skip(f"demo weights not shipped yet: {missing}")
    return cfg.model_dump(mode="json")


@pytest.mark.slow
def test_demo_models_discriminate_through_the_stage(tmp_path):
    from laion_pipe.models.demo import synth

    models = _demo_models()
    rng = np.random.default_rng(20240611)  # held out: not a training seed
    n = 48
    matching, mismatching, wm, unsafe = [], [], [], []
    for i in range(n):
        s = synth.sample(rng, watermark=i % 2 == 0, unsafe=i % 3 == 0, size=128)
        matching.append(Pair(s.caption, s.image))
        mismatching.append(Pair(synth.mismatched_caption(rng, s.attrs), s.image))
        wm.append(s.attrs.watermarked)
        unsafe.append(s.attrs.unsafe)
    write_shard(tmp_path, "en", 0, matching)
    write_shard(tmp_path, "en", 1, mismatching)
    wf = workflow_from_dict({"models": models, "runner": {"progress": False}, "score": {"batch_size": 16}})
    tables = {}
    for part in score.plan(str(tmp_path), wf):
        score.process(part, str(tmp_path), wf)
        tables[part.key] = pq.read_table(tmp_path / "scores/en" / f"{part.param('shard')}.parquet")
    good, bad = tables["en-00000"], tables["en-00001"]
    assert good["status"].to_pylist() == ["ok"] * n
    assert np.mean(good["similarity"].to_numpy() > bad["similarity"].to_numpy()) >= 0.9
    wm, unsafe = np.array(wm), np.array(unsafe)
    pw, pu = good["pwatermark"].to_numpy(), good["punsafe"].to_numpy()
    assert _auc(pw[wm], pw[~wm]) >= 0.9
    assert _auc(pu[unsafe], pu[~unsafe]) >= 0.9
