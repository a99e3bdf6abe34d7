"""The training loader (laion_pipe.train.loader) on small shards written here with webdataset's
TarWriter: JPEG + caption + LAION/img2dataset `.json`, with broken images, missing captions,
missing or null scores, and varied sizes and aspect ratios."""
from __future__ import annotations

import io
import math
import random
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch
import webdataset as wds
from PIL import Image

from laion_pipe.train.buckets import bucket_sizes, nearest_bucket
from laion_pipe.train.loader import (LoaderSpec, LoaderStream, Position, ResumePlan, SampleFilter, filter_reason, is_holdout,
                                     make_loader, resume_plan, worker_plan)
from laion_pipe.train.loader_images import cover_size
from s3_stub import moto_s3
from servers import serve_folder

REPO = Path(__file__).resolve().parents[1]
LEFT, RIGHT = (230, 20, 20), (20, 20, 230)


@dataclass
class Written:
    key: str
    caption: str  # "" when the sample has none
    meta: dict
    size: tuple[int, int]  # stored (width, height)
    broken: bool


def _picture(w: int, h: int) -> Image.Image:
    """Left half red, right half blue: a flip is visible."""
    img = Image.new("RGB", (w, h), LEFT)
    img.paste(Image.new("RGB", (w - w // 2, h), RIGHT), (w // 2, 0))
    return img


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def write_shards(folder: Path, shards: int, per_shard: int, *, seed: int = 0, prefix: str = "",
                 broken_every: int = 0, no_caption_every: int = 0, sides: tuple[int, int] = (24, 96)) -> list[Written]:
    """`shards` tars of `per_shard` samples; every `broken_every`-th image truncated, every
    `no_caption_every`-th sample without any caption; random scores, some missing or null."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as tw:
            for i in range(per_shard):
                n = s * per_shard + i
                key = f"{prefix}{s:05d}{i:04d}"
                w, h = rng.randint(*sides), rng.randint(*sides)
                data = _jpeg(_picture(w, h))
                broken = bool(broken_every) and n % broken_every == broken_every - 1
                if broken:
                    data = data[: len(data) // 3]
                caption = "" if no_caption_every and n % no_caption_every == 1 else f"a picture number {n}"
                meta = {"key": key, "similarity": round(rng.random(), 3), "punsafe": round(rng.random(), 3),
                        "pwatermark": round(rng.random(), 3), "aesthetic": round(rng.uniform(3, 7), 3),
                        "original_width": w * 2, "original_height": h * 2, "WIDTH": w * 2, "HEIGHT": h * 2}
                if n % 7 == 3:
                    del meta["pwatermark"]  # a missing score
                if n % 9 == 4:
                    meta["aesthetic"] = None  # a null score
                if n % 5 == 2:  # LAION's columns only: min_original_side falls back to WIDTH/HEIGHT
                    del meta["original_width"], meta["original_height"]
                if caption:
                    meta["caption"] = meta["TEXT"] = caption
                sample = {"__key__": key, "jpg": data, "json": orjson.dumps(meta)}
                if caption or n % 2:  # no caption: an empty .txt or no .txt at all
                    sample["txt"] = caption.encode()
                tw.write(sample)
                out.append(Written(key, caption, meta, (w, h), broken))
    return out


def spec(source, **kw) -> LoaderSpec:
    base = dict(sources=(str(source),), resolution=32, batch_size=8, num_workers=0, caption_dropout=0.0,
                shuffle_buffer=50)
    base.update(kw)
    return LoaderSpec(**base)


def collect(loader) -> tuple[list[dict], list[str], Counter]:
    batches = list(loader)
    skipped: Counter = Counter()
    for b in batches:
        skipped.update(b["skipped"])
    return batches, [k for b in batches for k in b["key"]], skipped


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[Written]]:
    folder = tmp_path_factory.mktemp("shards")
    return folder, write_shards(folder, 8, 25, broken_every=11, no_caption_every=13)


def good(written: list[Written]) -> set[str]:
    return {w.key for w in written if w.caption and not w.broken}


# --- batches -------------------------------------------------------------------------------------


def test_batches_have_the_contract_shapes_types_and_range(data):
    import open_clip

    folder, written = data
    tok = open_clip.tokenizer.SimpleTokenizer()
    batches, keys, _ = collect(make_loader(spec(folder / "*.tar", num_workers=2), tokenize=tok))
    by_key = {w.key: w for w in written}
    assert sorted(keys) == sorted(good(written))
    for b in batches:
        n = len(b["key"])
        assert 1 <= n <= 8
        px = b["pixel_values"]
        assert px.dtype == torch.float32 and tuple(px.shape) == (n, 3, 32, 32)
        assert -1.0 <= float(px.min()) and float(px.max()) <= 1.0
        assert b["input_ids"].shape == (n, 77) and b["input_ids"].dtype == torch.long
        assert torch.equal(b["input_ids"], tok(b["caption"]))
        assert b["original_size"].dtype == torch.long and tuple(b["original_size"].shape) == (n, 2)
        assert b["crop_coords"].dtype == torch.long and tuple(b["crop_coords"].shape) == (n, 2)
        for i, key in enumerate(b["key"]):
            w = by_key[key]
            assert b["caption"][i] == w.caption
            # (height, width) before download's resize, from the .json (original_* or WIDTH/HEIGHT)
            assert b["original_size"][i].tolist() == [w.meta["HEIGHT"], w.meta["WIDTH"]]
            rw, rh = cover_size(*w.size, 32, 32)
            assert b["crop_coords"][i].tolist() == [round((rh - 32) / 2), round((rw - 32) / 2)]
    # red left half, blue right half: centre crops keep both, unflipped
    px = torch.cat([b["pixel_values"] for b in batches])
    assert float(px[:, 0, :, :4].mean()) > 0.6 and float(px[:, 2, :, :4].mean()) < -0.6
    assert float(px[:, 2, :, -4:].mean()) > 0.6 and float(px[:, 0, :, -4:].mean()) < -0.6


def test_pixels_match_a_full_decode_resize_and_crop(tmp_path):
    """Draft decoding and the region resize change resampling noise only, not geometry."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).resize((400, 240), Image.BICUBIC)
    with wds.TarWriter(str(tmp_path / "00000.tar")) as tw:
        tw.write({"__key__": "k", "jpg": _jpeg(base), "txt": b"noise"})
    (b,) = list(make_loader(spec(tmp_path / "00000.tar", resolution=48)))
    full = Image.open(io.BytesIO(_jpeg(base))).convert("RGB").resize((80, 48), Image.BILINEAR)
    ref = np.asarray(full)[:, 16:64].astype(np.float64)
    got = (b["pixel_values"][0].permute(1, 2, 0).numpy() + 1) * 127.5
    psnr = 10 * math.log10(255**2 / float(np.mean((got - ref) ** 2)))
    assert psnr > 30, psnr
    assert b["crop_coords"][0].tolist() == [0, 16] and b["original_size"][0].tolist() == [240, 400]


def test_random_flip_mirrors_about_half_and_records_the_crop(data):
    folder, written = data
    plain = {k: (px, cc) for b in make_loader(spec(folder / "*.tar")) for k, px, cc in
             zip(b["key"], b["pixel_values"], b["crop_coords"])}
    flipped = 0
    by_key = {w.key: w for w in written}
    for b in make_loader(spec(folder / "*.tar", random_flip=True)):
        for k, px, cc in zip(b["key"], b["pixel_values"], b["crop_coords"]):
            ref, ref_cc = plain[k]
            if torch.allclose(px, ref, atol=1e-6):
                assert cc.tolist() == ref_cc.tolist()
                continue
            flipped += 1
            assert float((px - torch.flip(ref, dims=[-1])).abs().mean()) < 0.05
            assert float(px[2, :, :4].mean()) > 0.6  # blue now on the left
            rw, _ = cover_size(*by_key[k].size, 32, 32)
            assert cc.tolist() == [ref_cc[0].item(), rw - ref_cc[1].item() - 32]
    assert 0.3 < flipped / len(plain) < 0.7


def test_random_crop_stays_inside_the_resized_image(data):
    folder, written = data
    by_key = {w.key: w for w in written}
    lefts = set()
    for b in make_loader(spec(folder / "*.tar", center_crop=False)):
        for k, cc in zip(b["key"], b["crop_coords"].tolist()):
            rw, rh = cover_size(*by_key[k].size, 32, 32)
            assert 0 <= cc[0] <= rh - 32 and 0 <= cc[1] <= rw - 32
            if rw > 40:
                lefts.add(cc[1])
    assert len(lefts) > 3


# --- skips and filters ---------------------------------------------------------------------------


def test_broken_and_captionless_samples_are_skipped_and_counted(data):
    folder, written = data
    _, keys, skipped = collect(make_loader(spec(folder / "*.tar", num_workers=2)))
    assert sorted(keys) == sorted(good(written))
    assert skipped == {"no_caption": sum(not w.caption for w in written),
                       "decode_error": sum(w.caption != "" and w.broken for w in written)}
    assert skipped["no_caption"] >= 10 and skipped["decode_error"] >= 10


def test_not_an_image_and_missing_image_are_counted(tmp_path):
    with wds.TarWriter(str(tmp_path / "00000.tar")) as tw:
        tw.write({"__key__": "a", "jpg": _jpeg(_picture(40, 40)), "txt": b"fine"})
        tw.write({"__key__": "b", "jpg": b"<html>not found</html>", "txt": b"html"})
        tw.write({"__key__": "c", "txt": b"no image member"})
        tw.write({"__key__": "d", "jpg": _jpeg(_picture(40, 40)), "txt": b"bad json", "json": b"{oops"})
    batches, keys, skipped = collect(make_loader(spec(tmp_path / "00000.tar")))
    assert keys == ["a"] and skipped == {"decode_error": 1, "no_image": 1, "bad_json": 1}


def _expected_reason(meta: dict, f: SampleFilter) -> str | None:
    """The filter rule written the way public training scripts write it: keys read from the
    .json with defaults that drop the sample when the key is missing."""
    def get(k, default):
        v = meta.get(k, default)
        return default if v is None else v

    if f.min_similarity is not None and get("similarity", -1.0) < f.min_similarity:
        return "min_similarity"
    if f.max_punsafe is not None and get("punsafe", 2.0) > f.max_punsafe:
        return "max_punsafe"
    if f.max_pwatermark is not None and get("pwatermark", 2.0) > f.max_pwatermark:
        return "max_pwatermark"
    if f.min_aesthetic is not None and get("aesthetic", -1.0) < f.min_aesthetic:
        return "min_aesthetic"
    side = min(get("original_width", get("WIDTH", 0)), get("original_height", get("HEIGHT", 0)))
    if f.min_original_side is not None and side < f.min_original_side:
        return "min_original_side"
    return None


@pytest.mark.parametrize("filters", [
    SampleFilter(min_similarity=0.3),
    SampleFilter(max_punsafe=0.5, max_pwatermark=0.7),
    SampleFilter(min_aesthetic=4.5),
    SampleFilter(min_original_side=100),
    SampleFilter(min_similarity=0.2, max_punsafe=0.9, max_pwatermark=0.9, min_aesthetic=3.5, min_original_side=80),
])
def test_filters_keep_exactly_the_samples_the_json_says(data, filters):
    folder, written = data
    _, keys, skipped = collect(make_loader(spec(folder / "*.tar", filters=filters, num_workers=2)))
    expected = Counter()
    kept = set()
    for w in written:
        reason = "no_caption" if not w.caption else _expected_reason(w.meta, filters)
        reason = reason or ("decode_error" if w.broken else None)
        if reason:
            expected[reason] += 1
        else:
            kept.add(w.key)
    assert sorted(keys) == sorted(kept)
    assert skipped == expected
    assert 0 < len(kept) < len(good(written))


def test_filter_reason_drops_missing_and_null_scores():
    f = SampleFilter(min_similarity=0.3, max_pwatermark=0.5)
    assert filter_reason({"similarity": 0.3, "pwatermark": 0.5}, f) is None  # bounds are inclusive
    assert filter_reason({"similarity": 0.29, "pwatermark": 0.1}, f) == "min_similarity"
    assert filter_reason({"similarity": 0.4}, f) == "max_pwatermark"
    assert filter_reason({"similarity": None, "pwatermark": 0.1}, f) == "min_similarity"
    assert filter_reason({"similarity": "nan", "pwatermark": 0.1}, f) == "min_similarity"
    side = SampleFilter(min_original_side=256)
    assert filter_reason({"original_width": 300, "original_height": 256, "WIDTH": 10, "HEIGHT": 10}, side) is None
    assert filter_reason({"WIDTH": 300, "HEIGHT": 255}, side) == "min_original_side"
    assert filter_reason({}, side) == "min_original_side"


# --- caption dropout, holdout ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, list[Written]]:
    folder = tmp_path_factory.mktemp("many")
    return folder, write_shards(folder, 4, 500, sides=(16, 20), seed=1)


def test_caption_dropout_rate_is_p_and_deterministic_for_a_seed(many):
    folder, written = many

    def dropped(seed: int, p: float = 0.1, source: str = "*.tar") -> set[str]:
        s = spec(folder / source, caption_dropout=p, seed=seed, batch_size=100, resolution=8)
        return {k for b in make_loader(s) for k, c in zip(b["key"], b["caption"]) if c == ""}

    a, b, c = dropped(0), dropped(0), dropped(1)
    n = len(written)
    assert a == b
    assert a != c
    sigma = math.sqrt(0.1 * 0.9 / n)
    assert abs(len(a) / n - 0.1) < 4 * sigma and abs(len(c) / n - 0.1) < 4 * sigma
    assert len(dropped(0, p=0.0, source="00000.tar")) == 0 and len(dropped(0, p=1.0, source="00000.tar")) == 500


def test_is_holdout_is_a_stable_hash_of_the_key():
    keys = [f"{i:09d}" for i in range(20000)]
    held = [k for k in keys if is_holdout(k, 0.05)]
    assert abs(len(held) / len(keys) - 0.05) < 0.006
    assert held == [k for k in keys if is_holdout(k, 0.05)]
    assert set(held) <= {k for k in keys if is_holdout(k, 0.2)}
    assert not any(is_holdout(k, 0.0) for k in keys[:100])
    # pinned: a hash of the key alone (not Python's per-process hash()), the same in any process
    assert len(held) == 990
    assert held[:5] == ["000000004", "000000007", "000000009", "000000031", "000000034"]


def test_holdout_exclude_and_only_partition_the_samples(many):
    folder, written = many
    kw = dict(holdout_fraction=0.1, batch_size=100, resolution=8)
    _, train, sk_train = collect(make_loader(spec(folder / "*.tar", holdout="exclude", **kw)))
    _, held, sk_held = collect(make_loader(spec(folder / "*.tar", holdout="only", **kw)))
    _, every, _ = collect(make_loader(spec(folder / "*.tar", holdout="all", **kw)))
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(every) == sorted(w.key for w in written)
    assert set(held) == {w.key for w in written if is_holdout(w.key, 0.1)}
    assert sk_train == {"holdout": len(held)} and sk_held == {"not_holdout": len(train)}
    nothing_held = spec(folder / "00000.tar", holdout="only", holdout_fraction=0.0, batch_size=100, resolution=8)
    assert list(make_loader(nothing_held)) == []


# --- aspect-ratio buckets ----------------------------------------------------------------------------


def test_bucket_sizes_are_equal_area_and_symmetric():
    for res, n, tol in [(64, 5, 0.05), (256, 9, 0.02), (512, 7, 0.02), (1024, 9, 0.01)]:
        b = bucket_sizes(res, n)
        assert len(b) == n
        assert all(abs(h * w / res**2 - 1) <= tol for h, w in b), b
        assert all(h % 8 == 0 and w % 8 == 0 for h, w in b)
        assert set(b) == {(w, h) for h, w in b} and (res, res) in b
        ratios = [w / h for h, w in b]
        assert ratios == sorted(ratios) and 0.45 < ratios[0] and ratios[-1] < 2.2
    assert bucket_sizes(64, 1) == [(64, 64)]
    assert nearest_bucket(200, 100, bucket_sizes(256, 9)) == 8  # 2:1 goes to the widest
    assert nearest_bucket(100, 100, bucket_sizes(256, 9)) == 4


def test_every_batch_comes_from_one_bucket(data):
    folder, written = data
    by_key = {w.key: w for w in written}
    buckets = bucket_sizes(64, 5)
    seen = Counter()
    batches, keys, _ = collect(make_loader(spec(folder / "*.tar", resolution=64, aspect_buckets=5, num_workers=2)))
    assert sorted(keys) == sorted(good(written))
    for b in batches:
        h, w = b["pixel_values"].shape[-2:]
        assert (h, w) in buckets
        for k in b["key"]:
            assert buckets[nearest_bucket(*by_key[k].size, buckets)] == (h, w)
        seen[(h, w)] += len(b["key"])
    assert len(seen) >= 3
    full = [b for b in batches if len(b["key"]) == 8]
    assert len(full) >= len(batches) - 2 * len(buckets)  # partial batches only where buckets run out


# --- distribution, determinism, resume ------------------------------------------------------------


def test_ranks_and_workers_split_the_epoch_exactly(data):
    folder, written = data
    per_rank = []
    for rank in range(2):
        _, keys, _ = collect(make_loader(spec(folder / "*.tar", num_workers=2), rank=rank, world_size=2))
        assert len(keys) == len(set(keys))
        per_rank.append(set(keys))
    assert not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == good(written)
    assert per_rank[0] and per_rank[1]


def test_fewer_shards_than_readers_is_a_clear_error(tmp_path):
    write_shards(tmp_path, 3, 4)
    with pytest.raises(ValueError, match=r"has 3 shard\(s\), fewer than world_size 2 x num_workers 2 = 4"):
        make_loader(spec(tmp_path / "*.tar", num_workers=2), rank=0, world_size=2)
    assert len(list(make_loader(spec(tmp_path / "*.tar", num_workers=1), rank=1, world_size=3)))
    with pytest.raises(ValueError, match="rank 2 is not in"):
        make_loader(spec(tmp_path / "*.tar"), rank=2, world_size=2)


def test_same_seed_and_epoch_same_order_other_epoch_or_seed_other_order(data):
    folder, _ = data

    def order(seed: int, epoch: int) -> list[str]:
        return collect(make_loader(spec(folder / "*.tar", num_workers=2, seed=seed), epoch=epoch))[1]

    first = order(0, 0)
    assert order(0, 0) == first
    assert order(0, 1) != first and sorted(order(0, 1)) == sorted(first)
    assert order(1, 0) != first
    unshuffled = collect(make_loader(spec(folder / "*.tar", shuffle_buffer=0)))[1]
    assert unshuffled == sorted(unshuffled)


def test_resume_plan_continues_the_round_robin_through_partial_batches_and_exhausted_workers():
    # full batches of 8 from 2 workers: taken 0,1,0,1,0 -> worker 1's turn; it becomes physical 0
    full = [[8] * 10, [8] * 10]
    plan = resume_plan(5 * 8, full)
    assert plan == ResumePlan(1, (3, 2), 0)
    assert worker_plan(plan, 0) == (1, 2, 0) and worker_plan(plan, 1) == (0, 3, 0)
    assert worker_plan(resume_plan(5 * 8 + 3, full), 0) == (1, 2, 3)
    assert worker_plan(resume_plan(0, full), 1) == (1, 0, 0)
    # worker 1 has 3 batches, the last partial (5); worker 0 has 7, its last partial (2):
    # order 0:8 1:8 0:8 1:8 0:8 1:5 0:8 0:8 0:8 0:2
    tail = [[8, 8, 8, 8, 8, 8, 2], [8, 8, 5]]
    assert resume_plan(8 * 5 + 5, tail) == ResumePlan(0, (3, 3), 0)  # worker 1 done: worker 0 goes on alone
    assert resume_plan(8 * 5 + 5 + 8 + 3, tail) == ResumePlan(0, (4, 3), 3)
    assert resume_plan(8 * 5 + 5 + 8 * 4 + 2, tail) == ResumePlan(0, (7, 3), 0)  # the whole epoch
    # three workers, the middle one exhausted first
    three = [[4, 4, 4], [4], [4, 4, 1]]  # order 0:4 1:4 2:4 0:4 2:4 0:4 2:1
    plan = resume_plan(16, three)  # worker 1's turn, though exhausted: it gives nothing, then 2, 0, 2
    assert plan == ResumePlan(1, (2, 1, 1), 0)
    assert [worker_plan(plan, p) for p in range(3)] == [(1, 1, 0), (2, 1, 0), (0, 2, 0)]


def _unbalanced(tmp_path, sizes: list[int]) -> Path:
    """Shards of very different lengths (so one worker runs out long before the other)."""
    folder = tmp_path / "unbalanced"
    for i, n in enumerate(sizes):
        write_shards(folder / f"s{i}", 1, n, seed=i, prefix=f"s{i}-", broken_every=7 if i == 0 else 0,
                     sides=(16, 90))
        (folder / f"s{i}" / "00000.tar").rename(folder / f"{i:05d}.tar")
    return folder


@pytest.mark.parametrize("buckets", [0, 4])
def test_resume_in_the_epochs_tail_with_two_workers_and_unbalanced_shards(tmp_path, buckets):
    """Kill anywhere (every sample count, the tail where one worker is exhausted included) and
    resume with 2 workers: the samples after the cut are exactly the uninterrupted run's, none
    replayed, none skipped, batch for batch."""
    folder = _unbalanced(tmp_path, [61, 9, 12, 5])  # 2 workers: one gets ~70 samples, the other ~17
    s = spec(folder / "*.tar", num_workers=2, aspect_buckets=buckets, resolution=32, caption_dropout=0.3,
             random_flip=True, center_crop=False, shuffle_buffer=20, batch_size=6)
    full = list(make_loader(s, epoch=1))
    flat = [k for b in full for k in b["key"]]
    sizes = [len(b["key"]) for b in full]
    assert len(flat) == len(set(flat)) and min(sizes) < 6  # partial batches exist
    # the tail: the last batches all come from one worker (the other was exhausted)
    ends = np.cumsum(sizes).tolist()
    cuts = sorted({0, *ends[-4:], ends[-3] - 2, ends[len(ends) // 2] + 1, len(flat) - 1})
    for cut in cuts:
        rest = list(make_loader(s, epoch=1, start_sample=cut))
        got = [k for b in rest for k in b["key"]]
        assert got == flat[cut:], f"cut {cut}: replayed or skipped samples"
        for b in rest[1:]:  # after the first, the same batches with the same pixels and captions
            j = next(i for i, f in enumerate(full) if f["key"] == b["key"])
            assert b["caption"] == full[j]["caption"] and torch.equal(b["pixel_values"], full[j]["pixel_values"])


@pytest.mark.parametrize("buckets", [0, 4])
def test_the_batches_own_positions_resume_without_a_replay_in_the_main_process(tmp_path, buckets, monkeypatch):
    """Each batch names its logical worker; the Position they add up to after any batch is the
    plan the sample count gives (found by replaying every worker), and resuming from it hands out
    the same rest without that replay."""
    folder = _unbalanced(tmp_path, [61, 9, 12, 5])
    s = spec(folder / "*.tar", num_workers=2, aspect_buckets=buckets, resolution=32, caption_dropout=0.3,
             random_flip=True, center_crop=False, shuffle_buffer=20, batch_size=6)
    full = list(make_loader(s, epoch=2))
    flat = [k for b in full for k in b["key"]]
    assert {b["worker"] for b in full} == {0, 1} and full[-1]["worker"] == full[-2]["worker"]  # a tail
    positions, pos = [], Position.start(2)
    for b in full:
        pos.take(b)
        positions.append(Position(list(pos.batches), pos.next_worker))
    replays = []
    real_sizes = LoaderStream._sizes
    monkeypatch.setattr(LoaderStream, "_sizes", lambda self, *a: replays.append(a) or real_sizes(self, *a))
    ends = np.cumsum([len(b["key"]) for b in full]).tolist()
    for i in sorted({0, 1, 2, 3, len(full) // 2, len(full) - 3, len(full) - 2}):
        cut, plan = ends[i], positions[i].plan()
        assert plan == resume_plan(cut, [[len(b["key"]) for b in full if b["worker"] == w] for w in (0, 1)]), i
        replays.clear()
        rest = list(make_loader(s, epoch=2, start_sample=cut, plan=plan))
        assert not replays, "the training process replayed the workers' batches"
        assert [k for b in rest for k in b["key"]] == flat[cut:], f"after batch {i}: replayed or skipped samples"
        assert [b["worker"] for b in rest] == [b["worker"] for b in full[i + 1:]]


@pytest.mark.parametrize("start", [16, 24, 29, 45])
@pytest.mark.parametrize("buckets", [0, 5])
def test_resume_at_a_sample_count_gives_exactly_the_rest(data, start, buckets):
    folder, _ = data
    s = spec(folder / "*.tar", num_workers=2, aspect_buckets=buckets, resolution=64 if buckets else 32,
             caption_dropout=0.5, random_flip=True, center_crop=False)
    full = list(make_loader(s, epoch=3))
    flat = [(k, c, px) for b in full for k, c, px in zip(b["key"], b["caption"], b["pixel_values"])]
    rest = list(make_loader(s, epoch=3, start_sample=start))
    got = [(k, c, px) for b in rest for k, c, px in zip(b["key"], b["caption"], b["pixel_values"])]
    assert [g[:2] for g in got] == [f[:2] for f in flat[start:]]
    assert all(torch.equal(g[2], f[2]) for g, f in zip(got, flat[start:]))
    # batch boundaries continue too: after the partial first one, the same batches
    sizes = [len(b["key"]) for b in rest]
    if start % 8 == 0:
        assert [b["key"] for b in rest] == [b["key"] for b in full[start // 8:]]
    else:
        assert sizes[0] == 8 - start % 8 and [b["key"] for b in rest[1:]] == [b["key"] for b in full[start // 8 + 1:]]
    # skips already reported before the restart are not reported again
    tail = Counter()
    for b in full[math.ceil(start / 8):]:
        tail.update(b["skipped"])
    resumed = Counter()
    for b in rest[1 if start % 8 else 0:]:
        resumed.update(b["skipped"])
    assert resumed == tail


# --- sources ----------------------------------------------------------------------------------------


def test_two_sources_mixed_by_weight(tmp_path):
    write_shards(tmp_path / "a", 2, 300, prefix="a", sides=(16, 20))
    write_shards(tmp_path / "b", 2, 300, prefix="b", sides=(16, 20), seed=2)
    s = spec(str(tmp_path / "a" / "*.tar"), resolution=8, batch_size=50)
    s = LoaderSpec(**{**s.__dict__, "sources": (str(tmp_path / "a/*.tar"), str(tmp_path / "b/{00000..00001}.tar")),
                      "weights": (3.0, 1.0)})
    _, keys, _ = collect(make_loader(s))
    share = sum(k.startswith("a") for k in keys) / len(keys)
    assert abs(share - 0.75) < 0.06, share
    # the epoch ends when "a" (drawn 3x as often) runs out: all its 600 samples, about 200 of "b"
    assert len(keys) == len(set(keys)) and sum(k.startswith("a") for k in keys) == 600
    assert 740 < len(keys) < 870
    s2 = LoaderSpec(**{**s.__dict__, "weights": (1.0, 3.0)})
    _, keys2, _ = collect(make_loader(s2))
    assert abs(sum(k.startswith("b") for k in keys2) / len(keys2) - 0.75) < 0.06
    # no weights: one pool, every sample of both sources once
    s3 = LoaderSpec(**{**s.__dict__, "weights": None})
    assert len(collect(make_loader(s3))[1]) == 1200


def test_a_recipe_name_resolves_in_the_run_directory(tmp_path):
    written = write_shards(tmp_path / "run" / "dataset" / "laion2B-en", 2, 6)
    _, keys, _ = collect(make_loader(spec("laion2B-en", run_dir=str(tmp_path / "run"))))
    assert sorted(keys) == sorted(w.key for w in written)
    with pytest.raises(ValueError, match=r"'laion-aesthetics': no shards .*datasets there: laion2B-en\)"):
        make_loader(spec("laion-aesthetics", run_dir=str(tmp_path / "run")))
    with pytest.raises(ValueError, match="no run_dir"):
        make_loader(spec("laion2B-en"))
    with pytest.raises(ValueError, match="does not exist"):
        make_loader(spec(str(tmp_path / "nowhere" / "00000.tar")))
    # a directory of shards is a source too
    assert len(collect(make_loader(spec(tmp_path / "run" / "dataset" / "laion2B-en")))[1]) == 12


def test_an_http_source_on_loopback(data):
    folder, written = data
    with serve_folder(folder) as base:
        url = f"{base}/{{00000..00007}}.tar"
        _, keys, skipped = collect(make_loader(spec(url, num_workers=2)))
        assert sorted(keys) == sorted(good(written))
        assert set(skipped) == {"no_caption", "decode_error"}
        with pytest.raises(ValueError, match="HTTP cannot be listed"):
            make_loader(spec(f"{base}/*.tar"))
        # a shard that is not there: counted, the others still read
        _, keys, skipped = collect(make_loader(spec(url.replace("00007}", "00008}"))))
        assert sorted(keys) == sorted(good(written)) and skipped["shard_error"] == 1


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as endpoint:
        yield endpoint


def test_an_s3_source(data, s3_endpoint):
    import s3fs

    folder, written = data
    fs = s3fs.S3FileSystem(anon=False)
    fs.mkdir("loader-test")
    for p in sorted(folder.glob("*.tar")):
        fs.put(str(p), f"loader-test/ds/{p.name}")
    _, keys, _ = collect(make_loader(spec("s3://loader-test/ds/*.tar", num_workers=2)))
    assert sorted(keys) == sorted(good(written))


# --- the benchmark, as a user runs it -----------------------------------------------------------------


@pytest.mark.slow
def test_bench_loader_runs_and_ends_with_its_ratio():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_loader.py"), "--images", "64",
                          "--shards", "4", "--rounds", "1", "--resolution", "64", "--batch-size", "8"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "loader" in out.stdout and "webdataset" in out.stdout
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
