"""Shared fixtures: the real Common Crawl samples and a small in-process Dask client."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# img2dataset imports albumentations, which asks PyPI for updates on import: tests send no
# traffic anywhere but 127.0.0.1.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Several test processes share the cores (pytest-xdist): each, and every command it starts (the
# demo trains in its own process), gets one torch/OpenMP thread, as torchrun gives each of its
# processes. Two processes each spinning up an OpenMP team per core made the demo's training
# 2-3x slower than on one thread (the demo fixture: 400 s instead of ~200 s).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
CC_SAMPLES = REPO.parent / "shared" / "data" / "cc-samples"


@pytest.fixture(scope="session")
def cc_samples() -> Path:
    """The real Common Crawl excerpts in ../shared/data/cc-samples (skip when absent)."""
    if not CC_SAMPLES.is_dir():
        pytest.skip("../shared/data/cc-samples is not present")
    return CC_SAMPLES


@pytest.fixture(scope="session")
def dask_client():
    """An in-process Dask client (threads): cheap to start, shared by the session's tests."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


# Longest modules first (CPU seconds measured on 2 cores: the demo's fixture alone ~240 s, then
# the distributed trainings ~130 s, the fault tests ~100 s, ...). pytest-xdist hands out whole
# modules (--dist loadscope --no-loadscope-reorder) in collection order, so a long module
# collected late runs alone at the end while the other processes sit idle; longest first, the
# short ones fill in at the end. Everything else keeps its order (the sort is stable).
_LONGEST_FIRST = ("test_demo.py", "test_train_distributed.py", "test_faults.py", "test_rerun_cli.py", "test_cli_e2e.py",
                  "test_bench_curation.py", "test_index_demo.py", "test_train.py", "test_rerun_converges.py",
                  "test_train_loader.py", "test_dedup.py", "test_evaluate_stage.py", "test_train_resume.py",
                  "test_draft_psnr.py", "test_train_resume_workers.py", "test_train_launch.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
