"""benchmarks/bench_extract.py runs as a user runs it (small sizes): both modes end with their
ratio line, and --record writes the unit cost the scaling estimate reads."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_extract.py"


def _bench(*args: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio: \d+\.\d{3}", lines[-1]), lines[-3:]
    return lines


@pytest.mark.slow
def test_function_mode_and_record(tmp_path):
    costs = tmp_path / "unit_costs.json"
    lines = _bench("--records", "301", "--repeat", "1", "--only", "project", "--only", "fastwarc+json",
                   "--cache", str(tmp_path), "--record", "--cost-file", str(costs))
    assert any(line.startswith("project ") for line in lines) and any(line.startswith("fastwarc+json ") for line in lines)
    entry = json.loads(costs.read_text())["extract.core_seconds_per_wat"]
    assert entry["value"] > 0 and entry["source"].startswith("measured here: benchmarks/bench_extract.py")
    assert "150,000 records" in entry["unit"]


@pytest.mark.slow
def test_whole_command_mode(tmp_path):
    lines = _bench("--whole-command", "--pages", "150", "--repeat", "1", "--cache", str(tmp_path),
                   "--set", "cluster.n_workers=1")
    figures = {line.split()[0]: line for line in lines}
    assert "command" in figures and "fastwarc+json" in figures
    assert any(line.startswith("pairs kept: ") and not line.startswith("pairs kept: 0 ") for line in lines)
