"""The select stage: thresholds, drop reasons, resharding, LAION-5B columns, recipes and presets.

Scores are written by hand here (the score stage has its own tests), so each case says exactly
which pair must be kept and why the others are not."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import mmh3
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shards import Pair, draw_image, record_done, write_shard

from laion_pipe.config import ConfigError, workflow_from_dict
from laion_pipe.config.presets import PRESETS
from laion_pipe.recipes import resolve_recipes
from laion_pipe import runner
from laion_pipe.runner import stage_status
from laion_pipe.schema import DATASET_SCHEMA, SCORE_SCHEMA
from laion_pipe.stages import select

NAN = float("nan")
REPO = Path(__file__).resolve().parents[1]


def write_scored(root, subset: str, shard: int, rows: list[dict], ext: str = "jpg") -> None:
    """A download shard plus its scores. Each row: text, sim, and optionally punsafe, pwatermark,
    aesthetic, size=(original w, h), status ('ok' / 'score_error'), colour."""
    pairs = [
        Pair(r["text"], draw_image(r.get("colour", "red"), "circle"), original_size=r.get("size", (640, 480)), language=r.get("lang", "en"))
        for r in rows
    ]
    write_shard(root, subset, shard, pairs, ext=ext)
    meta = pq.read_table(root / "images" / subset / f"{shard:05d}.parquet")
    table = pa.table(
        {
            "key": meta["key"],
            "uid": meta["uid"],
            "similarity": pa.array([r["sim"] for r in rows], pa.float32()),
            "punsafe": pa.array([r.get("punsafe", 0.01) for r in rows], pa.float32()),
            "pwatermark": pa.array([r.get("pwatermark", 0.1) for r in rows], pa.float32()),
            "aesthetic": pa.array([r.get("aesthetic", 5.5) for r in rows], pa.float32()),
            "status": pa.array([r.get("status", "ok") for r in rows], pa.string()),
            "error_message": pa.array([None] * len(rows), pa.string()),
        },
        schema=SCORE_SCHEMA,
    )
    folder = root / "scores" / subset
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / f"{shard:05d}.parquet")
    record_done(root, "score", f"{subset}-{shard:05d}", [f"scores/{subset}/{shard:05d}.parquet"])


def wf_of(**select_cfg):
    return workflow_from_dict({"runner": {"progress": False}, "select": select_cfg})


def run_all(out, wf) -> dict:
    """plan + process every partition here (no cluster), recording the plan and the manifests
    as the runner does (what later readers go by); outcomes by key."""
    parts = select.plan(str(out), wf)
    runner.write_plan(str(out), select.NAME, parts)
    outcomes = {}
    for p in parts:
        outcomes[p.key] = select.process(p, str(out), wf)
        runner.write_manifest(str(out), select.NAME, p.key, fingerprint=p.fingerprint, inputs=p.inputs, outcome=outcomes[p.key])
    return outcomes


def read_dataset(out, name: str) -> tuple[pa.Table, dict[str, dict]]:
    """All parquet rows of dataset/{name}, and the tar members by key (ext -> bytes)."""
    folder = out / "dataset" / name
    table = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))], promote_options="none")
    members: dict[str, dict] = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return table, members


def test_thresholds_per_subset_and_drop_reasons(tmp_path):
    write_scored(tmp_path, "en", 0, [
        {"text": "keep en 0.30", "sim": 0.30},
        {"text": "drop en 0.27", "sim": 0.27},
        {"text": "keep en exactly 0.28", "sim": 0.28},
        {"text": "unscorable", "sim": NAN, "status": "score_error"},
        {"text": "drop en nan", "sim": NAN},
    ])
    write_scored(tmp_path, "multi", 0, [
        {"text": "keep multi 0.27", "sim": 0.27, "lang": "de"},
        {"text": "drop multi 0.25", "sim": 0.25, "lang": "fr"},
    ])
    outcomes = run_all(tmp_path, wf_of())
    en, _ = read_dataset(tmp_path, "en")
    multi, _ = read_dataset(tmp_path, "multi")
    assert sorted(en["TEXT"].to_pylist()) == ["keep en 0.30", "keep en exactly 0.28"]
    assert multi["TEXT"].to_pylist() == ["keep multi 0.27"] and multi["LANGUAGE"].to_pylist() == ["de"]
    assert outcomes["en-00000"].drops == {"en": {"low_similarity": 2}}  # the score_error row was counted by score
    assert outcomes["multi-00000"].drops == {"multi": {"low_similarity": 1}}
    assert outcomes["en-00000"].kept == {"en": 2}
    # no nolang input: one empty partition, no files
    assert outcomes["nolang-00000"].outputs == [] and not (tmp_path / "dataset/nolang").exists()


def test_optional_bounds_drop_with_the_first_failed_reason(tmp_path):
    write_scored(tmp_path, "en", 0, [
        {"text": "ok", "sim": 0.4},
        {"text": "low sim and unsafe", "sim": 0.1, "punsafe": 0.9},
        {"text": "unsafe", "sim": 0.4, "punsafe": 0.5},
        {"text": "watermark", "sim": 0.4, "pwatermark": 0.8},
        {"text": "small", "sim": 0.4, "size": (100, 600), "pwatermark": 0.9},
        {"text": "ugly", "sim": 0.4, "aesthetic": 3.0},
        {"text": "no aesthetic score", "sim": 0.4, "aesthetic": NAN},
    ])
    wf = wf_of(max_punsafe=0.5, max_pwatermark=0.5, min_side=200, min_aesthetic=4.0)
    outcomes = run_all(tmp_path, wf)
    table, members = read_dataset(tmp_path, "en")
    assert table["TEXT"].to_pylist() == ["ok"] and len(members) == 1
    assert outcomes["en-00000"].drops["en"] == {
        "low_similarity": 1, "unsafe": 1, "watermark": 1, "side_too_small": 1, "low_aesthetic": 2,
    }


def test_laion5b_columns_hash_and_original_size(tmp_path):
    write_scored(tmp_path, "en", 0, [
        {"text": "a red circle", "sim": 0.35, "size": (1920, 1080), "punsafe": 0.2, "pwatermark": 0.3, "aesthetic": 6.1},
        {"text": "a blue circle", "sim": 0.31, "size": (300, 400), "colour": "blue"},
    ])
    run_all(tmp_path, wf_of())
    table, members = read_dataset(tmp_path, "en")
    assert table.schema.equals(DATASET_SCHEMA)
    first = table.to_pylist()[0]
    url = first["URL"]
    assert first["hash"] == mmh3.hash64(url + "a red circle")[0]
    assert (first["WIDTH"], first["HEIGHT"]) == (1920, 1080)  # original size, not the 64px download
    assert first["similarity"] == pytest.approx(0.35) and first["punsafe"] == pytest.approx(0.2)
    assert first["pwatermark"] == pytest.approx(0.3) and first["aesthetic"] == pytest.approx(6.1)
    assert first["subset"] == "en" and first["LANGUAGE"] == "en" and len(first["uid"]) == 32
    # the tar sample carries the same record, the caption and the image bytes as downloaded
    src = pq.read_table(tmp_path / "images/en/00000.parquet").to_pylist()[0]
    m = members[first["key"]]
    assert m["txt"].decode() == "a red circle"
    assert orjson.loads(m["json"])["hash"] == first["hash"]
    with tarfile.open(tmp_path / "images/en/00000.tar") as tf:
        assert m["jpg"] == tf.extractfile(f"{src['key']}.jpg").read()


def test_resharding_to_samples_per_shard(tmp_path):
    n_kept = 0
    for shard, size in enumerate([5, 0, 7, 3]):
        rows = [{"text": f"s{shard} r{i}", "sim": 0.5 if i % 4 else 0.1} for i in range(size)]
        n_kept += sum(r["sim"] > 0.28 for r in rows)
        write_scored(tmp_path, "en", shard, rows)
    outcomes = run_all(tmp_path, wf_of(samples_per_shard=4))
    en = {k: o for k, o in outcomes.items() if k.startswith("en-")}
    assert n_kept == 10 and len(en) == 3
    sizes = [pq.read_metadata(tmp_path / f"dataset/en/{i:05d}.parquet").num_rows for i in range(3)]
    assert sizes == [4, 4, 2]
    table, members = read_dataset(tmp_path, "en")
    keys = table["key"].to_pylist()
    assert len(set(keys)) == 10 and set(members) == set(keys)
    assert keys[:5] == ["000000000", "000000001", "000000002", "000000003", "000010000"]  # img2dataset-style
    # input order is kept, and every input shard's drops are reported exactly once
    assert [t.split()[0] for t in table["TEXT"].to_pylist()] == ["s0"] * 3 + ["s2"] * 5 + ["s3"] * 2
    assert sum(o.drops.get("en", {}).get("low_similarity", 0) for o in en.values()) == 5
    assert sum(o.kept["en"] for o in en.values()) == 10


def test_presets_each_get_their_folder(tmp_path):
    write_scored(tmp_path, "en", 0, [
        {"text": "big en", "sim": 0.30, "size": (1024, 1024), "aesthetic": 5.0, "pwatermark": 0.2},
        {"text": "mid en aesthetic 5.01", "sim": 0.29, "size": (512, 512), "aesthetic": 5.01, "pwatermark": 0.49},
        {"text": "mid en watermarked", "sim": 0.29, "size": (800, 600), "aesthetic": 6.0, "pwatermark": 0.5},
        {"text": "en below 0.28", "sim": 0.27, "size": (2048, 2048), "aesthetic": 7.0},
        {"text": "small en", "sim": 0.40, "size": (511, 900), "aesthetic": 6.5, "pwatermark": 0.0},
    ])
    write_scored(tmp_path, "multi", 0, [{"text": "big multi", "sim": 0.27, "size": (1200, 1500), "aesthetic": 4.0, "lang": "de"}])
    write_scored(tmp_path, "nolang", 0, [{"text": "big nolang", "sim": 0.20, "size": (3000, 3000), "lang": None}])
    wf = wf_of(presets=list(PRESETS), samples_per_shard=2)
    outcomes = run_all(tmp_path, wf)

    def texts(name):
        return sorted(read_dataset(tmp_path, name)[0]["TEXT"].to_pylist())

    assert texts("laion2B-en") == ["big en", "mid en aesthetic 5.01", "mid en watermarked", "small en"]
    assert texts("laion-high-resolution") == ["big en", "big multi"]  # nolang 0.20 < 0.26
    assert texts("laion-improved-aesthetics") == ["mid en aesthetic 5.01"]  # > 5.0, < 0.5, >= 512x512
    assert texts("laion-aesthetics-v2-5plus") == ["big en", "mid en aesthetic 5.01", "mid en watermarked", "small en"]
    # a recipe over several subsets gets unique keys and keeps each pair's subset
    hr, members = read_dataset(tmp_path, "laion-high-resolution")
    assert sorted(hr["subset"].to_pylist()) == ["en", "multi"] and len(set(hr["key"].to_pylist())) == 2 == len(members)
    # presets report counts only: the funnel is the language subsets'
    assert all(not o.drops and not o.kept for k, o in outcomes.items() if k.startswith("laion"))
    assert sum(o.counts["kept.en"] for k, o in outcomes.items() if k.startswith("laion-improved")) == 1


def test_named_recipe_and_strict_bound(tmp_path):
    write_scored(tmp_path, "en", 0, [{"text": f"a{i}", "sim": s} for i, s in enumerate([0.2, 0.25, 0.3])])
    wf = wf_of(default_recipes=False, recipes={"loose": {"subsets": ["en"], "min_similarity": 0.25, "greater_than": ["similarity"]}})
    outcomes = run_all(tmp_path, wf)
    assert list(outcomes) == ["loose-00000"]
    assert read_dataset(tmp_path, "loose")[0]["TEXT"].to_pylist() == ["a2"]
    assert outcomes["loose-00000"].counts["dropped.en.low_similarity"] == 2


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"select\.presets.*unknown preset"):
        workflow_from_dict({"select": {"presets": ["laion-nope"]}})
    with pytest.raises(ConfigError, match=r"select.*unique"):
        workflow_from_dict({"select": {"recipes": {"en": {"subsets": ["en"]}}}})
    with pytest.raises(ConfigError, match=r"select\.recipes\.x\.min_wdth: unknown key"):
        workflow_from_dict({"select": {"recipes": {"x": {"min_wdth": 5}}}})
    with pytest.raises(ConfigError, match=r"folder-safe"):
        workflow_from_dict({"select": {"recipes": {"../up": {}}}})
    names = [r.name for r in resolve_recipes(workflow_from_dict({"select": {"presets": ["laion2B-en"]}}).select)]
    assert names == ["en", "multi", "nolang", "laion2B-en"]


def test_run_on_dask_reruns_only_what_a_threshold_changes(tmp_path, dask_client):
    for shard in range(3):
        write_scored(tmp_path, "en", shard, [{"text": f"{shard}-{i}", "sim": 0.26 + 0.01 * i} for i in range(6)])
    write_scored(tmp_path, "multi", 0, [{"text": "m", "sim": 0.3, "lang": "de"}])
    wf = wf_of(samples_per_shard=5)
    first = select.run(str(tmp_path), wf, dask_client)
    assert first.complete and first.kept == {"en": 12, "multi": 1} and first.drops["en"] == {"low_similarity": 6}
    assert sorted(p.name for p in (tmp_path / "dataset/en").glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    same = select.run(str(tmp_path), wf, dask_client)
    assert same.done == 0 and same.skipped == first.done
    # a higher EN threshold: EN shards redone (now fewer), MULTI untouched, stale EN shards gone
    stricter = select.run(str(tmp_path), wf_of(samples_per_shard=5, similarity={"en": 0.30, "multi": 0.26, "nolang": 0.26}), dask_client)
    assert stricter.kept == {"en": 6, "multi": 1} and stricter.skipped == 2  # multi + nolang
    assert sorted(p.name for p in (tmp_path / "dataset/en").iterdir()) == [
        "00000.parquet", "00000.tar", "00001.parquet", "00001.tar", "_recipe.json", "sizes.json"]
    # open_clip's per-folder sizes: each tar's samples, counted here from the tars themselves
    with tarfile.open(tmp_path / "dataset/en/00000.tar") as a, tarfile.open(tmp_path / "dataset/en/00001.tar") as b:
        counted = {"00000.tar": sum(m.name.endswith(".txt") for m in a), "00001.tar": sum(m.name.endswith(".txt") for m in b)}
    assert orjson.loads((tmp_path / "dataset/en/sizes.json").read_bytes()) == counted == {"00000.tar": 5, "00001.tar": 1}
    status = stage_status(str(tmp_path), "select")
    assert status["pending"] == [] and "en-00002" not in status["done"] and not status["failed"]
    summary = orjson.loads((tmp_path / "dataset/en/_recipe.json").read_bytes())
    assert summary["shards"] == 2 and summary["counts"]["kept.en"] == 6 and summary["bounds"]["min_similarity"] == [["en", 0.30]]


def test_open_clips_trainer_reads_a_dataset_folder_with_the_readmes_workaround(tmp_path, dask_client):
    """OpenCLIP's own data code on our shards: the size from sizes.json (no --train-num-samples),
    and every sample through its webdataset pipeline with the README's end-of-shard workaround."""
    import functools
    import subprocess
    import sys

    data = pytest.importorskip("open_clip_train.data")
    import webdataset.tariterators as tariterators

    for shard in range(2):
        write_scored(tmp_path, "en", shard, [{"text": f"{shard}-{i}", "sim": 0.5} for i in range(4)])
    assert select.run(str(tmp_path), wf_of(samples_per_shard=3), dask_client).complete
    folder = tmp_path / "dataset" / "en"
    assert data.get_dataset_size(f"{folder}/{{00000..00002}}.tar") == (8, 3)
    expander = functools.partial(tariterators.tar_file_expander, eof_value=None)  # the README's patch
    files = expander([{"url": str(p), "stream": open(p, "rb")} for p in sorted(folder.glob("*.tar"))])
    samples = list(data.group_by_keys_nothrow(files))
    assert len(samples) == 8 and all({"jpg", "txt", "json"} <= set(s) for s in samples)
    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith('python -c "import functools'))
    code = line[len('python -c "'):].rstrip(" \\") + next(ln for ln in readme.splitlines() if ln.startswith("d.tar_file_expander")).rstrip(" \\")
    code += next(ln for ln in readme.splitlines() if ln.startswith("from open_clip_train.main")).rstrip('" \\')
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--train-data" in r.stdout, r.stderr[-2000:]


def test_other_image_formats_are_copied_with_their_extension(tmp_path):
    write_scored(tmp_path, "en", 0, [{"text": "png pair", "sim": 0.5}], ext="png")
    run_all(tmp_path, wf_of())
    _, members = read_dataset(tmp_path, "en")
    (sample,) = members.values()
    assert set(sample) == {"png", "txt", "json"}
    from PIL import Image

    assert Image.open(io.BytesIO(sample["png"])).format == "PNG"


def test_recipe_reasons_are_vectorised_and_nan_safe():
    (en,) = [r for r in resolve_recipes(workflow_from_dict({"select": {"max_punsafe": 0.5}}).select) if r.name == "en"]
    cols = {
        "similarity": np.array([0.3, 0.1, np.nan, 0.3]),
        "punsafe": np.array([0.1, 0.9, 0.1, np.nan]),
        "pwatermark": np.zeros(4),
        "aesthetic": np.zeros(4),
        "width": np.full(4, 10.0),
        "height": np.full(4, 10.0),
    }
    assert en.reasons("en", cols).tolist() == [0, 1, 1, 3]  # keep, low_similarity (first), NaN sim, NaN punsafe


def test_presets_follow_the_configured_subset_thresholds():
    """laion2B-en is 'EN at LAION's threshold': with another CLIP the configured one carries over."""
    cfg = workflow_from_dict({"select": {"presets": list(PRESETS), "similarity": {"en": 0.7, "multi": 0.6, "nolang": 0.5}}}).select
    by_name = {r.name: r for r in resolve_recipes(cfg)}
    assert dict(by_name["laion2B-en"].min_similarity) == {"en": 0.7}
    assert dict(by_name["laion-high-resolution"].min_similarity) == {"en": 0.7, "multi": 0.6, "nolang": 0.5}
    assert by_name["laion-improved-aesthetics"].greater_than == ("aesthetic",)
    assert by_name["laion-aesthetics-v2-5plus"].min_aesthetic == 5.0 and not by_name["laion-aesthetics-v2-5plus"].greater_than


def test_bounds_compare_in_the_scores_float32_precision(tmp_path):
    """A pair scored exactly float32(0.26) passes `>= 0.26` (widened to float64 it is 0.2599999...);
    the next float32 below fails. Same at values float32 holds exactly (0.25, 0.5) and for the
    `<` bounds (punsafe, pwatermark)."""
    f32 = np.float32
    below = lambda x: float(np.nextafter(f32(x), f32(0)))  # noqa: E731 - the float32 just under x
    write_scored(tmp_path, "multi", 0, [
        {"text": "exactly 0.26", "sim": 0.26, "lang": "de"},
        {"text": "just under 0.26", "sim": below(0.26), "lang": "de"},
    ])
    write_scored(tmp_path, "en", 0, [
        {"text": "exactly 0.28", "sim": 0.28},
        {"text": "just under 0.28", "sim": below(0.28)},
        {"text": "punsafe exactly 0.5", "sim": 0.3, "punsafe": 0.5},
        {"text": "punsafe just under 0.5", "sim": 0.3, "punsafe": below(0.5)},
        {"text": "pwatermark exactly 0.26", "sim": 0.3, "pwatermark": 0.26},
        {"text": "pwatermark just under 0.26", "sim": 0.3, "pwatermark": below(0.26)},
    ])
    run_all(tmp_path, wf_of(max_punsafe=0.5, max_pwatermark=0.26))
    assert read_dataset(tmp_path, "multi")[0]["TEXT"].to_pylist() == ["exactly 0.26"]
    assert sorted(read_dataset(tmp_path, "en")[0]["TEXT"].to_pylist()) == [
        "exactly 0.28", "punsafe just under 0.5", "pwatermark just under 0.26"]
    # the same on arrays, at a bound float32 holds exactly
    (en,) = [r for r in resolve_recipes(workflow_from_dict({"select": {"similarity": {"en": 0.25, "multi": 0.26, "nolang": 0.26}}}).select) if r.name == "en"]
    cols = {"similarity": np.array([0.25, below(0.25)], np.float32), "punsafe": np.zeros(2, np.float32),
            "pwatermark": np.zeros(2, np.float32), "aesthetic": np.zeros(2, np.float32),
            "width": np.full(2, 10.0), "height": np.full(2, 10.0)}
    assert en.reasons("en", cols).tolist() == [0, 1]


def test_sample_json_carries_img2dataset_keys_and_a_script_style_filter_agrees_with_the_parquet(tmp_path):
    """A filter written the way public training scripts write it (keys read from each sample's
    `.json` with defaults) keeps exactly the samples the parquet says it should."""
    write_scored(tmp_path, "en", 0, [
        {"text": "big clean", "sim": 0.35, "size": (1024, 768), "pwatermark": 0.1},
        {"text": "big watermarked", "sim": 0.35, "size": (1024, 768), "pwatermark": 0.9},
        {"text": "small clean", "sim": 0.35, "size": (200, 150), "pwatermark": 0.1},
        {"text": "tall narrow", "sim": 0.35, "size": (255, 900), "pwatermark": 0.2},
        {"text": "no watermark score", "sim": 0.35, "size": (512, 512), "pwatermark": NAN},
    ])
    run_all(tmp_path, wf_of())
    table, members = read_dataset(tmp_path, "en")
    src = {r["url"]: r for r in pq.read_table(tmp_path / "images/en/00000.parquet").to_pylist()}
    for key, m in members.items():
        doc = orjson.loads(m["json"])
        s = src[doc["URL"]]
        assert doc["url"] == doc["URL"] and doc["caption"] == doc["TEXT"] == m["txt"].decode() and doc["key"] == key
        for k in ("status", "width", "height", "original_width", "original_height", "sha256"):
            assert doc[k] == s[k], k
        assert {"similarity", "hash", "punsafe", "pwatermark", "LANGUAGE", "aesthetic", "WIDTH", "HEIGHT"} <= set(doc)

    def script_filter(doc: dict) -> bool:
        return doc.get("original_width", 0) >= 256 and (doc.get("pwatermark") if doc.get("pwatermark") is not None else 1.0) <= 0.5

    by_json = sorted(k for k, m in members.items() if script_filter(orjson.loads(m["json"])))
    rows = table.to_pylist()
    by_parquet = sorted(r["key"] for r in rows if r["WIDTH"] >= 256 and r["pwatermark"] is not None
                        and not np.isnan(r["pwatermark"]) and r["pwatermark"] <= 0.5)
    assert by_json == by_parquet
    assert sorted(r["TEXT"] for r in rows if r["key"] in by_json) == ["big clean"]
