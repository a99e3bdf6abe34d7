"""Shared fixtures: the real Common Crawl samples and a small in-process Dask client."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# img2dataset imports albumentations, which asks PyPI for updates on import: tests send no
# traffic anywhere but 127.0.0.1.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

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
