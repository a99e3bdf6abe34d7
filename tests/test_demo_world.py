"""The demo world's truth table describes exactly what its WAT pages reference, so tests can hold
the pipeline to it: here, that every "duplicate" row ends as a duplicate drop and nothing else does."""
from __future__ import annotations

from collections import Counter

import pandas as pd

from laion_pipe.demo.run import demo_workflow
from laion_pipe.demo.world import WorldSpec, build_world
from laion_pipe.stages import dedup, extract


def _drops(report) -> Counter:
    total: Counter = Counter()
    for reasons in report.drops.values():
        total.update(reasons)
    return total


def test_truth_rows_carry_the_urls_the_pages_reference(tmp_path):
    spec = WorldSpec(n_pages=30, images_per_page=8, n_wat_files=3, seed=5,
                     kinds={"match": 0.6, "duplicate": 0.25, "bad_source": 0.15})
    with build_world(tmp_path / "world", spec) as world:
        truth = world.truth
    dup = truth[truth.kind == "duplicate"]
    originals = truth[~truth.kind.isin(["duplicate", "bad_source", "short"])]
    assert len(dup) > 10
    # a duplicate reuses an earlier image's url and alt: both are in the table as that image's row
    pairs = set(zip(originals.url, originals.alt))
    assert all((u, a) in pairs for u, a in zip(dup.url, dup.alt))
    bad = truth[truth.kind == "bad_source"]
    assert bad.url.str.contains(r"^data:|^javascript:|\.svg$|\.gif$").all()


def test_every_duplicate_ends_as_a_duplicate_drop(tmp_path, dask_client):
    spec = WorldSpec(n_pages=24, images_per_page=8, n_wat_files=3, seed=7,
                     kinds={"match": 0.5, "missing": 0.2, "duplicate": 0.3})
    out = str(tmp_path / "run")
    with build_world(tmp_path / "world", spec) as world:
        wf = demo_workflow(world.wat_paths, out, ["runner.progress=false"])
        ext = extract.run(out, wf, dask_client)
        ded = dedup.run(out, wf, dask_client)
        truth = world.truth
    n_dup = int((truth.kind == "duplicate").sum())
    assert n_dup > 10
    in_file, across = _drops(ext)["duplicate_in_file"], _drops(ded)["duplicate_url"]
    assert in_file + across == n_dup, (in_file, across, n_dup)
    assert across > 0  # duplicates of images on other files' pages are found by the global dedup
    unique = pd.concat([pd.read_parquet(p) for p in (tmp_path / "run" / "unique").glob("*/*.parquet")])
    assert unique.url.is_unique
    assert set(unique.url) == set(truth[truth.kind != "duplicate"].url)
