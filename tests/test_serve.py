"""The index stage and `laion-pipe serve` on a small scored run: what the index holds agrees with
the dataset and the tars, queries find what they should, exports block what they list, bad input
gets clear errors, and no path outside the run is ever served."""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from shards import Pair, draw_image, synthetic_pairs, write_shard

from laion_pipe import knn
from laion_pipe.config import ConfigError, workflow_from_dict
from laion_pipe.pipeline import run_stages

REPO = Path(__file__).resolve().parents[1]


def _demo_models() -> dict:
    from laion_pipe.models import demo_models_config

    return demo_models_config().model_dump(mode="json")


def _pairs(seed: int) -> list[Pair]:
    pairs = synthetic_pairs(14, seed=seed)
    # captions that describe another picture: select drops them (low_similarity), the index keeps them
    pairs += [Pair(text="a yellow star on a black background", image=draw_image("red", "square", "white")) for _ in range(3)]
    return pairs


def _workflow(**index) -> dict:
    return {"models": _demo_models(), "runner": {"progress": False},
            "select": {"similarity": {"en": 0.6, "multi": 0.6, "nolang": 0.6}, "samples_per_shard": 12},
            "index": index}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory, dask_client) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    for shard in range(2):
        write_shard(out, "en", shard, _pairs(shard))
    write_shard(out, "multi", 0, _pairs(9)[:8])
    wf = workflow_from_dict(_workflow())
    reports = run_stages(wf, str(out), ["score", "select", "index"], dask_client)
    assert all(not r.failed for r in reports), [r.failed for r in reports]
    (out / "stats").mkdir()
    (out / "stats" / "report.html").write_text("<html><body>the run's report</body></html>")
    (out / "secret.txt").write_text("SECRET-IN-RUN")
    (out.parent / "outside.txt").write_text("SECRET-OUTSIDE")
    os.symlink(out.parent / "outside.txt", out / "stats" / "escape.txt")
    os.symlink(out / "secret.txt", out / "stats" / "inside-link.txt")
    return out


@pytest.fixture(scope="module")
def client(run):
    from fastapi.testclient import TestClient

    from laion_pipe.serve.app import create_app

    return TestClient(create_app(str(run)))


def _metadata(run: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((run / "index" / "clip" / "metadata").glob("*.parquet"))], ignore_index=True)


def test_metadata_rows_are_the_embedding_rows_and_say_what_select_did(run):
    meta = _metadata(run)
    # row i = row i of the score stage's embedding metadata, files in name order (= index ids)
    emb_keys = [k for sub, sh in (("en", "00000"), ("en", "00001"), ("multi", "00000"))
                for k in pd.read_parquet(run / f"scores/{sub}/embeddings/metadata/metadata_{sh}.parquet").key]  # fmt: skip
    assert list(meta.key) == emb_keys and len(meta) == 17 + 17 + 8
    # kept = in the subset's dataset (read back from the dataset's own parquet files)
    dataset_uids = {s: set(pd.concat([pd.read_parquet(p) for p in (run / "dataset" / s).glob("*.parquet")]).uid) for s in ("en", "multi")}
    for row in meta.itertuples():
        assert row.kept == (row.uid in dataset_uids[row.subset])
    dropped = meta[~meta.kept]
    assert len(dropped) == 6  # the mismatching captions of the two en shards
    assert (dropped.drop_reason == "low_similarity").all() and (dropped.similarity < 0.6).all()
    assert meta[meta.kept].drop_reason.isna().all() and (meta[meta.kept].similarity >= 0.6).all()
    assert set(dropped.caption) == {"a yellow star on a black background"}


def test_image_bytes_come_from_the_tar(run, client):
    meta = _metadata(run)
    for i in (0, 20, len(meta) - 1):
        row = meta.iloc[i]
        with tarfile.open(run / row.tar) as tf:
            expected = tf.extractfile(f"{row.key}.jpg").read()
        r = client.get(f"/api/image/clip/{i}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == expected


def test_text_query_finds_the_described_pictures(run, client):
    r = client.post("/api/search", json={"text": "a green triangle on a white background", "k": 5})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 5
    drawn = int(_metadata(run).caption.str.startswith("a green triangle").sum())  # the pictures drawn so (captions match)
    assert drawn >= 1
    assert all("green triangle" in x["caption"] for x in results[:drawn]), [x["caption"] for x in results]
    assert results == sorted(results, key=lambda x: -x["score"])


def test_more_like_this_returns_the_picture_first_and_filters_apply(run, client):
    r = client.post("/api/search", json={"like": {"space": "clip", "id": 5}, "k": 3})
    first = r.json()["results"][0]
    assert first["score"] == pytest.approx(1.0, abs=2e-3)
    meta = _metadata(run)
    dropped = client.post("/api/search", json={"text": "a red square", "k": 50, "filters": {"status": "dropped"}}).json()["results"]
    assert dropped and all(not x["kept"] and x["drop_reason"] == "low_similarity" for x in dropped)
    assert len(dropped) == int((~meta.kept).sum())  # every allowed row, not the survivors of a top k
    multi = client.post("/api/search", json={"text": "a red square", "k": 50, "filters": {"subsets": ["multi"], "ranges": {"similarity": [0.6, None]}}}).json()["results"]
    assert multi and all(x["subset"] == "multi" and x["similarity"] >= 0.6 for x in multi)
    assert len(multi) == int(((meta.subset == "multi") & (meta.similarity >= 0.6)).sum())


def test_threshold_export_is_every_pair_above_the_score(run, client):
    """clip-retrieval's filter: a query and a threshold make a subset. Checked against a brute-force
    cosine over the stored embeddings."""
    q = {"text": "a blue circle on a white background"}
    r = client.post("/api/export", json={"query": q, "min_score": 0.5, "format": "urls", "name": "blue circles"})
    assert r.status_code == 200, r.text
    exported = [line for line in Path(r.json()["path"]).read_text().splitlines() if not line.startswith("#")]
    searcher = client.app.state.searcher
    qv = searcher.query_vectors(text=q["text"])["clip"][0]
    emb = np.concatenate([np.load(run / f"scores/{s}/embeddings/img_emb/img_emb_{sh}.npy").astype(np.float32)
                          for s, sh in (("en", "00000"), ("en", "00001"), ("multi", "00000"))])  # fmt: skip
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    meta = _metadata(run)
    expected = set(meta.url[emb @ qv > 0.5])
    # cosines within float16 rounding of the threshold may fall either side
    near = set(meta.url[np.abs(emb @ qv - 0.5) < 2e-3])
    assert set(exported) - near == expected - near and exported
    assert Path(r.json()["path"]).parent == run / "exports" and "blue-circles" in Path(r.json()["path"]).name


def test_blocklist_export_applied_by_select(run, client, dask_client, tmp_path):
    q = {"text": "a green square on a white background", "k": 4, "filters": {"status": "kept"}}
    r = client.post("/api/export", json={"query": q, "limit": 4, "format": "blocklist"})
    body = r.json()
    lines = [x for x in Path(body["path"]).read_text().splitlines() if not x.startswith("#")]
    shown = client.post("/api/search", json=q).json()["results"]
    assert lines == [hashlib.sha256(x["url"].encode()).hexdigest() for x in shown]  # Re-LAION's format: sha256 of the URL
    assert "select.blocked_url_hashes=" in body["command"] and body["path"] in body["command"]
    from laion_pipe.stages import select

    wf = workflow_from_dict(_workflow(), [f"select.blocked_url_hashes=[{body['path']}]"])
    report = select.run(str(run), wf, dask_client)
    assert sum(d.get("blocked_url_hash", 0) for d in report.drops.values()) == len(shown)
    kept = pd.concat([pd.read_parquet(p) for s in ("en", "multi") for p in (run / "dataset" / s).glob("*.parquet")])
    assert not set(x["url"] for x in shown) & set(kept.URL)
    # the index's metadata follows (its faiss indexes are not rebuilt)
    from laion_pipe.stages import index

    rep = index.run(str(run), wf, dask_client)
    assert rep.skipped == 2 and not rep.failed  # image and text index unchanged
    again = client.post("/api/search", json={**q, "filters": {"reasons": ["blocked_url_hash"]}}).json()["results"]
    assert sorted(x["url"] for x in again) == sorted(x["url"] for x in shown)
    # undo for the other tests
    select.run(str(run), workflow_from_dict(_workflow()), dask_client)
    index.run(str(run), workflow_from_dict(_workflow()), dask_client)


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"k": 5}, 400, "exactly one of"),
        ({"text": "  "}, 400, "empty"),
        ({"text": "x", "k": 0}, 422, "k"),
        ({"text": "x", "bogus": 1}, 422, "bogus"),
        ({"like": {"space": "clip", "id": 10_000}}, 404, "not in space"),
        ({"like": {"space": "nope", "id": 1}}, 404, "no space"),
        ({"image": "not base64!!"}, 400, "base64"),
        ({"image": "data:image/png;base64,aGVsbG8="}, 400, "not an image"),
        ({"text": "x", "filters": {"ranges": {"similarity": [0.9, 0.1]}}}, 400, "above the maximum"),
        ({"text": "x", "filters": {"status": "maybe"}}, 422, "status"),
    ],
)
def test_bad_queries_get_clear_errors(client, body, status, words):
    r = client.post("/api/search", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"] and "Traceback" not in r.text


def test_image_upload_query(run, client):
    buf = io.BytesIO()
    draw_image("blue", "circle", "white", 64).save(buf, "PNG")
    import base64

    data = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    results = client.post("/api/search", json={"image": data, "k": 3}).json()["results"]
    drawn = min(3, int(_metadata(run).caption.str.startswith("a blue circle").sum()))
    assert drawn >= 1
    assert all("blue circle" in x["caption"] for x in results[:drawn]), [x["caption"] for x in results]


def test_no_index_is_a_clear_error(tmp_path):
    from fastapi.testclient import TestClient

    from laion_pipe.serve.app import create_app

    (tmp_path / "_state").mkdir()
    c = TestClient(create_app(str(tmp_path)))
    r = c.post("/api/search", json={"text": "a cat"})
    assert r.status_code == 409 and "laion-pipe index --out" in r.json()["error"]
    assert "laion-pipe index" in c.get("/api/info").json()["error"]
    assert c.get("/").status_code == 200


def test_missing_embeddings_stop_the_index_stage_with_the_fix(tmp_path, dask_client):
    write_shard(tmp_path, "en", 0, synthetic_pairs(4))
    wf = workflow_from_dict({**_workflow(), "score": {"save_embeddings": False}})
    run_stages(wf, str(tmp_path), ["score", "select"], dask_client)
    r = subprocess.run([sys.executable, "-m", "laion_pipe", "index", "--out", str(tmp_path), "--no-progress"],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "save_embeddings" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    with pytest.raises(ConfigError, match="no saved embeddings"):
        from laion_pipe.stages import index

        index.run(str(tmp_path), workflow_from_dict(_workflow()), dask_client)


def test_ivf_path_is_exact_when_every_list_is_probed(run, dask_client, tmp_path):
    """The distributed IVF build (train, add per task, merge) indexes every row under its id:
    with IVF-Flat and all lists probed its results equal the exact index's."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    from laion_pipe.stages import index

    wf = workflow_from_dict(_workflow(exact_max_rows=10, factory="IVF4,Flat", rows_per_task=20))
    rep = index.run(str(copy), wf, dask_client)
    assert not rep.failed
    info = json.loads((copy / "index/clip/image.json").read_text())
    assert info["kind"] == "ivf" and info["factory"] == "IVF4,Flat"
    ivf, flat = knn.read_index(str(copy / "index/clip/image.index")), knn.read_index(str(run / "index/clip/image.index"))
    q = np.load(run / "scores/en/embeddings/img_emb/img_emb_00001.npy").astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s1, i1 = knn.search(ivf, q, 5, nprobe=4)
    s2, i2 = knn.search(flat, q, 5)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert not (copy / "_work" / "index").exists()  # work files go once the stage is complete


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "laion_pipe", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read())
            time.sleep(0.3)
    yield port
    proc.terminate()
    proc.wait(timeout=30)


def _raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET with the path exactly as written (http.client does not normalise dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    r = conn.getresponse()
    return r.status, r.read()


@pytest.mark.parametrize(
    "path",
    [
        "/report/../secret.txt",
        "/report/../../outside.txt",
        "/report/%2e%2e/secret.txt",
        "/report/%2e%2e%2fsecret.txt",
        "/report/%2E%2E%2F%2E%2E%2Foutside.txt",
        "/report/%252e%252e%252fsecret.txt",
        "/report/..%2f..%2foutside.txt",
        "/report/..%5csecret.txt",
        "/report//etc/passwd",
        "/report/%2fetc%2fpasswd",
        "/report/escape.txt",
        "/report/inside-link.txt",
        "/report/./report.html/../../secret.txt",
        "/exports/../secret.txt",
        "/exports/%2e%2e/_state/workflow.yaml",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/api/image/clip/-1",
        "/report/%00",
    ],
)
def test_no_path_outside_the_served_folders(server, path):
    status, body = _raw_get(server, path)
    assert status in (400, 404, 422), (path, status)
    assert b"SECRET" not in body and b"root:" not in body and b"import" not in body and b"Traceback" not in body


def test_served_pages_and_report(server):
    status, body = _raw_get(server, "/")
    assert status == 200 and b'id="query"' in body
    status, body = _raw_get(server, "/report/")
    assert status == 200 and b"the run's report" in body
    status, body = _raw_get(server, "/static/app.js")
    assert status == 200 and b"more like this" in body


def test_serve_command_refuses_what_is_not_a_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "laion_pipe", "serve", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a run directory" in " ".join(r.stderr.split())


def test_select_blocklist_errors_are_clear(tmp_path):
    from laion_pipe.recipes import resolve_recipes

    with pytest.raises(ConfigError, match="not found"):
        resolve_recipes(workflow_from_dict({"select": {"blocked_url_hashes": [str(tmp_path / "none.sha256")]}}).select)
    bad = tmp_path / "bad.sha256"
    bad.write_text("not-a-digest\n")
    with pytest.raises(ConfigError, match="not a hex"):
        resolve_recipes(workflow_from_dict({"select": {"blocked_url_hashes": [str(bad)]}}).select)
