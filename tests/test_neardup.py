"""Near-duplicate removal (laion_pipe.neardup): the hash, the matching rule against brute force,
and select's phases on hand-written shards whose copies are known (scenes drawn by the demo's
generator, copied re-encoded and resized under other keys, in other shards and subsets)."""
from __future__ import annotations

import io
import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from shards import Pair, record_done, write_shard

from laion_pipe import runner
from laion_pipe.config import workflow_from_dict
from laion_pipe.models.demo import synth
from laion_pipe.neardup import match
from laion_pipe.neardup.phash import bands, colour_array, features, features_of_bytes, hamming, hash_of_thumbnail, phash, thumbnail
from laion_pipe.schema import SCORE_SCHEMA
from laion_pipe.stages import select


def _imagehash(im: Image.Image) -> int:
    h = int(str(imagehash.phash(im)), 16)
    return h - (1 << 64) if h >= 1 << 63 else h


def _photo_like(w: int, h: int, seed: int) -> Image.Image:
    """A smooth colour field with shapes and sensor-like noise (as benchmarks/bench_download.py's)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    small = (rng.random((max(2, h // 48), max(2, w // 48), 3)) * 255).astype(np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    arr = np.asarray(im).astype(np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def test_the_dct_and_bits_are_imagehash_phash():
    # imagehash's own thumbnail (grey, Lanczos 32x32) through our DCT rows: imagehash's hash exactly
    rng = np.random.default_rng(0)
    for i in range(20):
        im = synth.render(synth.random_scene(rng, watermark=0.3), int(rng.integers(40, 300))) if i % 2 else \
            _photo_like(int(rng.integers(60, 400)), int(rng.integers(60, 400)), i)
        thumb = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS))
        assert hash_of_thumbnail(thumb) == _imagehash(im)


def test_phash_is_within_a_few_bits_of_imagehash():
    """The area-filtered thumbnail (cheap, from the array in memory) against imagehash's Lanczos:
    the bound the module docstring states. Low-contrast blurred scenes have coefficients near
    their median, so any change moves their bits (a re-encode too): they are the outliers."""
    rng = np.random.default_rng(0)
    demo = []
    for _ in range(150):
        im = synth.render(synth.random_scene(rng, watermark=0.2, degradation=0.2), int(rng.integers(64, 400)))
        demo.append(int(hamming(phash(im), _imagehash(im))))
        assert phash(np.asarray(im)[..., ::-1], bgr=True) == phash(im) == phash(np.asarray(im))
    photos = [int(hamming(phash(im), _imagehash(im)))
              for im in (_photo_like(int(rng.integers(200, 700)), int(rng.integers(200, 700)), i) for i in range(60))]
    for d in (demo, photos):
        assert np.mean(d) < 1.0 and np.mean(np.array(d) <= 2) >= 0.9, np.bincount(d)
    assert max(photos) <= 4, np.bincount(photos)


def test_thumbnail_is_opencvs_area_filter_in_one_step():
    """The block-then-area thumbnail against OpenCV's own one-step INTER_AREA (the reference) on
    photos and scenes at the sizes a resize makes (one side a multiple of 32) and others: at most
    one level apart where the two round a .5 differently, and the same hash."""
    import cv2

    rng = np.random.default_rng(1)
    sizes = [(256, 341), (341, 256), (455, 256), (256, 256), (384, 500), (512, 683), (256, 1024), (320, 250), (250, 333), (31, 64)]
    for i in range(40):
        w, h = sizes[i % len(sizes)]
        im = _photo_like(w, h, i) if i % 2 else synth.render(synth.random_scene(rng), 64).resize((w, h))
        arr = np.asarray(im)[..., ::-1].copy()
        got, want = thumbnail(arr), cv2.resize(arr, (32, 32), interpolation=cv2.INTER_AREA)
        assert got.shape == want.shape == (32, 32, 3) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.99, (w, h)
        grey = [cv2.cvtColor(t, cv2.COLOR_BGR2GRAY) for t in (got, want)]
        assert hash_of_thumbnail(grey[0]) == hash_of_thumbnail(grey[1]), (w, h)


def test_colour_grid_is_the_mean_colour_of_each_quadrant():
    rng = np.random.default_rng(4)
    for side in (64, 96, 320):  # multiples of 32: the area filter's cells tile the quadrants exactly
        im = synth.render(synth.random_scene(rng), side)
        arr = np.asarray(im).astype(np.float64)
        h = side // 2
        want = [arr[y:y + h, x:x + h].reshape(-1, 3).mean(axis=0) for y in (0, h) for x in (0, h)]
        got = np.frombuffer(features(im)[1], np.uint8).reshape(4, 3)
        assert np.abs(got - np.array(want)).max() <= 1.0
        assert features(np.asarray(im)[..., ::-1].copy(), bgr=True) == features(im)
    assert features_of_bytes(b"not an image") is None


def test_hamming_and_bands_find_every_pair_within_d_bits():
    rng = np.random.default_rng(1)
    a = rng.integers(-(2**63), 2**63 - 1, size=300, dtype=np.int64)
    b = a.copy()
    for i in range(len(b)):  # flip i % 6 random bits
        for bit in rng.choice(64, size=i % 6, replace=False):
            b[i] ^= np.int64(1) << np.int64(bit) if bit < 63 else np.int64(-(2**63))
    d = hamming(a, b)
    assert d.tolist() == [i % 6 for i in range(len(b))]
    assert d.tolist() == [bin((int(x) ^ int(y)) & (2**64 - 1)).count("1") for x, y in zip(a, b)]
    for max_d in range(6):  # pigeonhole: d <= max_d implies an equal band among max_d + 1
        ba, bb = bands(a, max_d + 1), bands(b, max_d + 1)
        shares = (ba == bb).any(axis=1)
        assert shares[d <= max_d].all()


def _brute(values, sim, area, keys, close):
    """The rule written out: a row is dropped when a row ranked above it is close; survivor = the
    best-ranked such row."""
    rank = sorted(range(len(keys)), key=lambda i: (-sim[i], -area[i], keys[i]))
    drops = {}
    for pos, i in enumerate(rank):
        for j in rank[:pos]:
            if close(values[i], values[j]):
                drops[i] = j
                break
    return drops


def test_hash_and_cosine_drops_match_brute_force():
    rng = np.random.default_rng(2)
    n = 1500  # more than one block of match.CHUNK rows
    base = rng.integers(0, 2**62, size=40, dtype=np.int64)
    hashes = np.array([base[i % 40] ^ (np.int64(1) << np.int64(rng.integers(0, 8))) * int(rng.random() < 0.5)
                       for i in range(n)], dtype=np.int64)
    sim = rng.choice([0.3, 0.4, 0.5], size=n)
    area = rng.choice([100, 200], size=n)
    keys = [f"{i:05d}" for i in range(n)]
    order = match.rank_order(sim, area, keys)
    assert order.tolist() == sorted(range(n), key=lambda i: (-sim[i], -area[i], keys[i]))
    got = match.hash_drops(hashes, order, 1)
    want = _brute(hashes, sim, area, keys, lambda x, y: bin((int(x) ^ int(y)) & (2**64 - 1)).count("1") <= 1)
    assert dict(zip(got.dropped.tolist(), got.survivor.tolist())) == want
    emb = rng.normal(size=(60, 16)).astype(np.float32)
    emb = np.repeat(emb, 5, axis=0) + rng.normal(scale=0.01, size=(300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim, area, keys = sim[:300], area[:300], keys[:300]
    got = match.cosine_drops(emb, match.rank_order(sim, area, keys), 0.001)
    want = _brute(emb, sim, area, keys, lambda x, y: float(np.dot(x, y)) >= np.float32(1 - 0.001))
    assert dict(zip(got.dropped.tolist(), got.survivor.tolist())) == want and want


def test_hash_drops_with_colour_grids_match_brute_force():
    """The colour check: a hash match counts only when every quadrant's colour is within
    max_colour levels; a row without a grid (a shard written before it) is matched by hash alone."""
    rng = np.random.default_rng(9)
    n = 400
    base = rng.integers(0, 2**62, size=30, dtype=np.int64)
    hashes = base[rng.integers(0, 30, n)]
    grids = rng.integers(0, 256, size=(6, 12))[rng.integers(0, 6, n)] + rng.integers(-8, 9, size=(n, 12))
    grids = grids.clip(0, 255).astype(np.uint8)
    valid = rng.random(n) > 0.2
    values = [g.tobytes() if v else None for g, v in zip(grids, valid)]
    grid, ok = colour_array(values)
    assert (ok == valid).all() and (grid[valid] == grids[valid]).all()
    sim, area, keys = rng.random(n), np.full(n, 100), [f"{i:04d}" for i in range(n)]
    got = match.hash_drops(hashes, match.rank_order(sim, area, keys), 0, (grid, ok), 10)

    def close(i, j):
        if hashes[i] != hashes[j]:
            return False
        return not (valid[i] and valid[j]) or np.abs(grids[i].astype(int) - grids[j].astype(int)).max() <= 10

    want = _brute(list(range(n)), sim, area, keys, close)
    assert dict(zip(got.dropped.tolist(), got.survivor.tolist())) == want
    plain = match.hash_drops(hashes, match.rank_order(sim, area, keys), 0)
    assert len(want) < len(plain.dropped)  # the grids kept some hash matches apart


# --- select's phases on shards with known copies -------------------------------------------------------


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _world(n_scenes: int = 24, seed: int = 3, recoloured: bool = False):
    """(subset, shard) -> rows: each scene once, and every third scene copied twice more (re-encoded
    at quality 70, resized to 80%) in other shards and subsets, with a lower similarity than the
    original except for one copy that beats it. With `recoloured`, every fourth scene has a
    distinct twin: the same layout in other colours (a scene of its own, not a copy), which
    pHash alone cannot tell from it."""
    import dataclasses

    rng = np.random.default_rng(seed)
    rows: dict[tuple[str, int], list[dict]] = {}
    copies = {}  # (subset, shard, index) of a copy -> its scene
    for s in range(n_scenes):
        scene = synth.random_scene(rng)
        im = synth.render(scene, 128)
        place = [("en", s % 2), ("multi", 0), ("en", 2)]
        variants = [(im, 0.8, s)]
        if s % 3 == 0:
            better = s % 6 == 0  # this copy has the highest similarity: the original goes
            variants += [(_jpeg(im, 70), 0.9 if better else 0.7, s), (im.resize((102, 102), Image.BILINEAR), 0.6, s)]
        if recoloured and s % 4 == 1:
            others = [c for c in synth.COLOURS if c not in (scene.colour, scene.background)]
            twin = dataclasses.replace(scene, colour=others[0], background=others[1])
            variants.append((synth.render(twin, 128), 0.5, n_scenes + s))
        for k, (v, sim, scene_id) in enumerate(variants):
            where = place[k] if k < len(place) else ("en", 3)
            bucket = rows.setdefault(where, [])
            copies[(where[0], where[1], len(bucket))] = scene_id
            bucket.append({"text": f"scene {scene_id} copy {k}", "image": v, "sim": sim})
    return rows, copies


def _write(tmp_path, rows, with_phash: bool = True, embeddings: dict | None = None):
    for (subset, shard), rs in rows.items():
        pairs = [Pair(r["text"], r["image"], original_size=r["image"].size, language="de" if subset == "multi" else "en")
                 for r in rs]
        write_shard(tmp_path, subset, shard, pairs)
        meta_path = tmp_path / "images" / subset / f"{shard:05d}.parquet"
        meta = pq.read_table(meta_path)
        if with_phash:  # as download writes them: the stored image's hash and colour grid
            found = [features_of_bytes(_stored_bytes(r["image"])) for r in rs]
            meta = meta.append_column("phash", pa.array([f[0] for f in found], pa.int64()))
            meta = meta.append_column("colour_grid", pa.array([f[1] for f in found], pa.binary(12)))
            pq.write_table(meta, meta_path)
            record_done(tmp_path, "download", f"{subset}-{shard:05d}", [f"images/{subset}/{shard:05d}.parquet"])
        n = len(rs)
        scores = pa.table({
            "key": meta["key"], "uid": meta["uid"], "similarity": pa.array([r["sim"] for r in rs], pa.float32()),
            "punsafe": pa.array([0.0] * n, pa.float32()), "pwatermark": pa.array([0.0] * n, pa.float32()),
            "aesthetic": pa.array([6.0] * n, pa.float32()), "status": pa.array(["ok"] * n),
            "error_message": pa.array([None] * n, pa.string()),
        }, schema=SCORE_SCHEMA)  # fmt: skip
        folder = tmp_path / "scores" / subset
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(scores, folder / f"{shard:05d}.parquet")
        outputs = [f"scores/{subset}/{shard:05d}.parquet"]
        if embeddings is not None:
            emb_dir = folder / "embeddings"
            for sub in ("img_emb", "text_emb", "metadata"):
                (emb_dir / sub).mkdir(parents=True, exist_ok=True)
            e = embeddings[(subset, shard)].astype(np.float16)
            np.save(emb_dir / "img_emb" / f"img_emb_{shard:05d}.npy", e)
            np.save(emb_dir / "text_emb" / f"text_emb_{shard:05d}.npy", e)
            pq.write_table(pa.table({"key": meta["key"], "uid": meta["uid"], "url": meta["url"], "caption": meta["text"]}),
                           emb_dir / "metadata" / f"metadata_{shard:05d}.parquet")
            outputs += [f"scores/{subset}/embeddings/{d}/{d}_{shard:05d}.{x}" for d, x in
                        (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet"))]
        record_done(tmp_path, "score", f"{subset}-{shard:05d}", outputs)


def _stored_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)  # tests/shards.py's jpeg_bytes
    return buf.getvalue()


def _truth(copies):
    """The generator's truth: per scene, every copy but one is a duplicate (the (subset, shard,
    index) of the copies beyond the first of each scene)."""
    by_scene: dict[int, list] = {}
    for where, scene in sorted(copies.items()):
        by_scene.setdefault(scene, []).append(where)
    return {w for v in by_scene.values() for w in v[1:]}


def _expected(rows, close):
    """The dropped (subset, shard, index) by the documented rule, brute force: a row goes when a row
    ranked above it (higher similarity, then larger area, then subset/shard/key order) is close."""
    where = [(sub, shard, i) for (sub, shard), rs in sorted(rows.items()) for i in range(len(rs))]
    r = [rows[w[:2]][w[2]] for w in where]
    keys = [f"{('en', 'multi', 'nolang').index(w[0])}/{w[1]:05d}/{w[2]:04d}" for w in where]
    drops = _brute(list(range(len(r))), [x["sim"] for x in r], [x["image"].size[0] ** 2 for x in r], keys,
                   lambda i, j: close(r[i], r[j]))
    return {where[i] for i in drops}


def _hash_close(a, b, bits=3, colour=12):
    """Copies by the documented rule, pair by pair: pHash (tested against imagehash above) within
    `bits`, and every quadrant's mean colour (numpy on the decoded stored image) within `colour`."""
    stored = [np.asarray(Image.open(io.BytesIO(_stored_bytes(x["image"]))).convert("RGB"), dtype=np.float64)
              for x in (a, b)]
    h = [phash(Image.fromarray(x.astype(np.uint8))) for x in stored]
    if int(hamming(h[0], h[1])) > bits:
        return False
    if colour is None:
        return True
    means = [np.array([x[y:y + len(x) // 2, c:c + len(x) // 2].reshape(-1, 3).mean(axis=0)
                       for y in (0, len(x) // 2) for c in (0, len(x) // 2)]) for x in stored]
    return np.abs(np.rint(means[0]) - np.rint(means[1])).max() <= colour


def _dropped(out) -> set:
    """The captions the datasets kept (every caption names its scene and copy)."""
    kept = set()
    for parquet in (out / "dataset").glob("*/*.parquet"):
        kept |= set(pq.read_table(parquet)["TEXT"].to_pylist())
    return kept


def _texts(rows, where_set):
    return {rows[w[:2]][w[2]]["text"] for w in where_set}


@pytest.mark.parametrize("with_phash", [True, False], ids=["phash-column", "legacy-shards-hashed-from-tars"])
def test_select_drops_exactly_the_lower_ranked_copies(tmp_path, dask_client, with_phash):
    rows, copies = _world(recoloured=True)
    _write(tmp_path, rows, with_phash=with_phash)
    wf = workflow_from_dict({"runner": {"progress": False}, "select": {
        "similarity": {"en": 0.1, "multi": 0.1, "nolang": 0.1}, "samples_per_shard": 7,
        "neardup": {"phash": True, "phash_max_distance": 4, "rows_per_bucket": 40}}})
    report = select.run(str(tmp_path), wf, dask_client)
    assert report.complete, report.failed
    want = _expected(rows, lambda a, b: _hash_close(a, b, bits=4))
    all_texts = {r["text"] for rs in rows.values() for r in rs}
    kept = _dropped(tmp_path)
    assert all_texts - kept == _texts(rows, want)
    drops = sum(c.get("near_duplicate", 0) for c in report.drops.values())
    assert drops == len(want)
    # against the generator's truth (8 copied scenes x 2 copies): only copies go, one of each scene
    # stays, and most copies are found
    per_scene = {}
    for w in want:
        per_scene[copies[w]] = per_scene.get(copies[w], 0) + 1
    assert len(_truth(copies)) == 16 and all(n <= 2 and s % 3 == 0 for s, n in per_scene.items()) and len(want) >= 13
    # the recoloured twins are scenes of their own and stay, though pHash puts some within 4 bits
    twins = {w: s for w, s in copies.items() if s >= 24}
    assert len(twins) == 6 and not set(twins) & want
    by_text = {r["text"]: r for rs in rows.values() for r in rs}
    hash_alike = [w for w, s in twins.items()
                  if _hash_close(rows[w[:2]][w[2]], by_text[f"scene {s - 24} copy 0"], bits=4, colour=None)]
    assert hash_alike, "no twin is within 4 bits of its scene: the colour check went untested"
    # several reduce buckets ran, and their result files say who replaced whom
    nd = runner.current(str(tmp_path), "select.neardup")
    assert len(nd) > 1 and all(runner.read_plan(str(tmp_path), "select.neardup"))
    table = pa.concat_tables([pq.read_table(tmp_path / rel) for d in nd for rel in d.outputs])
    assert set(table["reason"].to_pylist()) == {"near_duplicate"}
    # the work files are gone, a rerun does nothing, the dataset parquet carries the hash
    assert not (tmp_path / "_work" / "select").exists()
    again = select.run(str(tmp_path), wf, dask_client)
    assert again.done == 0 and again.skipped == report.done
    en = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "dataset" / "en").glob("*.parquet"))])
    assert en["phash"].null_count == (0 if with_phash else en.num_rows)
    # without the colour check, the twins pHash confuses with their scene go too
    no_colour = workflow_from_dict({"runner": {"progress": False}, "select": {
        "similarity": {"en": 0.1, "multi": 0.1, "nolang": 0.1}, "samples_per_shard": 7,
        "neardup": {"phash": True, "phash_max_distance": 4, "rows_per_bucket": 40, "colour_max_difference": None}}})
    select.run(str(tmp_path), no_colour, dask_client)
    assert _texts(rows, hash_alike) <= all_texts - _dropped(tmp_path)
    # turned off: every copy is back
    off = workflow_from_dict({"runner": {"progress": False}, "select": {
        "similarity": {"en": 0.1, "multi": 0.1, "nolang": 0.1}, "samples_per_shard": 7}})
    select.run(str(tmp_path), off, dask_client)
    assert _dropped(tmp_path) == all_texts and not runner.current(str(tmp_path), "select.neardup")


def test_semdedup_drops_cosine_copies_across_clusters_of_a_kmeans(tmp_path, dask_client):
    rows, copies = _world(n_scenes=30)
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(30, 32))
    emb = {}
    for where, rs in rows.items():
        e = []
        for i in range(len(rs)):
            scene = copies[(where[0], where[1], i)]
            e.append(centres[scene] + rng.normal(scale=0.002, size=32))  # a copy: cosine > 0.9999
        emb[where] = np.array(e)
    _write(tmp_path, rows, embeddings=emb)
    wf = workflow_from_dict({"runner": {"progress": False}, "score": {"save_embeddings": True}, "select": {
        "similarity": {"en": 0.1, "multi": 0.1, "nolang": 0.1},
        "neardup": {"semantic": True, "eps": 0.001, "cluster_size": 10, "rows_per_bucket": 15}}})
    report = select.run(str(tmp_path), wf, dask_client)
    assert report.complete, report.failed
    want = _expected(rows, lambda a, b: a["text"].split(" copy")[0] == b["text"].split(" copy")[0])  # same scene
    assert len(want) == len(_truth(copies)) == 20
    all_texts = {r["text"] for rs in rows.values() for r in rs}
    assert all_texts - _dropped(tmp_path) == _texts(rows, want)
    assert report.drops["en"].get("semantic_duplicate", 0) + report.drops["multi"].get("semantic_duplicate", 0) == len(want)
    assert len(runner.current(str(tmp_path), "select.neardup")) == 4  # ceil((30 + 20 copies) / 15) reduce tasks


def test_semantic_without_embeddings_is_a_config_error():
    from laion_pipe.config import ConfigError

    with pytest.raises(ConfigError, match="select.neardup.semantic.*save_embeddings"):
        workflow_from_dict({"select": {"neardup": {"semantic": True}}, "score": {"save_embeddings": False}})


def test_every_pair_is_found_whatever_the_bucket_count():
    # the bucket of a band depends only on (band index, value): two shards' equal bands meet
    from laion_pipe.neardup.phases import band_bucket

    rng = np.random.default_rng(7)
    v = rng.integers(0, 2**16, size=(50, 4)).astype(np.uint64)
    for n in (1, 3, 64):
        a, b = band_bucket(v, n), band_bucket(v.copy(), n)
        assert (a == b).all() and a.min() >= 0 and a.max() < n
    assert len(set(band_bucket(v, 64).reshape(-1).tolist())) > 32  # spread, not all in one
