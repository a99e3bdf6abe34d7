"""Per-unit costs of the pipeline's stages, each with where its number comes from.

The figures live in one small JSON file inside the package (`unit_costs.json`) so that a
benchmark can refresh the one it measures (`python benchmarks/bench_dedup.py --record`) and
`laion-pipe run WORKFLOW --dry-run` and docs/scaling.md read the same numbers.

Every entry says what kind of number it is, by the start of its `source`:

- `measured here: <command> on <date>, <n>-core machine; <details>`: a benchmark of this project;
- `published: <where>`: a figure printed by someone else (a README, a paper, a blog post);
- `derived: <arithmetic on published figures, shown>`: a published figure turned into this unit;
- `assumed: <why, and how to measure it>`: no measurement or publication found; these are the
  first numbers to replace.

A value without one of these prefixes is refused: an estimate is only as good as the reader's
ability to tell a measurement from a guess.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

KINDS: tuple[str, ...] = ("measured here", "published", "derived", "assumed")
DEFAULT_PATH = Path(__file__).with_name("unit_costs.json")


@dataclass(frozen=True)
class UnitCost:
    """One per-unit figure: `value` in `unit`, and where it comes from (`source`)."""

    key: str
    value: float
    unit: str
    source: str

    @property
    def kind(self) -> str:
        """`measured here`, `published`, `derived` or `assumed` (the source's prefix)."""
        return source_kind(self.source)

    def to_json(self) -> dict:
        return {"value": self.value, "unit": self.unit, "source": self.source}


def source_kind(source: str) -> str:
    """The kind a source string declares; a ValueError names the accepted prefixes otherwise."""
    head, sep, rest = source.partition(":")
    if not sep or head.strip() not in KINDS or not rest.strip():
        raise ValueError(
            f"source {source!r} must start with one of {', '.join(k + ':' for k in KINDS)} followed by where the number comes from"
        )
    return head.strip()


def validate(cost: UnitCost) -> UnitCost:
    if not cost.key or cost.key != cost.key.strip() or " " in cost.key:
        raise ValueError(f"unit cost key {cost.key!r}: a dotted name without spaces, e.g. extract.core_seconds_per_wat")
    if isinstance(cost.value, bool) or not isinstance(cost.value, (int, float)) or not math.isfinite(cost.value) or cost.value < 0:
        raise ValueError(f"{cost.key}: value must be a finite number >= 0, got {cost.value!r}")
    if not cost.unit.strip():
        raise ValueError(f"{cost.key}: unit must say what the number counts")
    try:
        source_kind(cost.source)
    except ValueError as e:
        raise ValueError(f"{cost.key}: {e}") from None
    return cost


def load_unit_costs(path: str | os.PathLike | None = None) -> dict[str, UnitCost]:
    """All entries of the cost file (the package's own by default), validated."""
    p = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"unit cost file not found: {p}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: expected an object of key -> {{value, unit, source}}")
    out: dict[str, UnitCost] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) != {"value", "unit", "source"}:
            raise ValueError(f"{p}: {key}: expected exactly the fields value, unit, source")
        try:
            out[key] = validate(UnitCost(key, entry["value"], entry["unit"], entry["source"]))
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None
    return out


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on `directory` (POSIX), so two benchmarks recording at once do not
    lose each other's entry in the read-modify-replace below. Elsewhere: no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_unit_cost(key: str, value: float, unit: str, source: str, *, path: str | os.PathLike | None = None) -> None:
    """Set one entry of the cost file (adding or replacing it), atomically: the file is written
    under a temporary name in the same folder and renamed into place, so a reader never sees half
    of it and a crash leaves the old file."""
    cost = validate(UnitCost(key, float(value), unit, source))
    p = Path(path) if path is not None else DEFAULT_PATH
    with _locked(p.parent):
        entries = {k: c.to_json() for k, c in load_unit_costs(p).items()} if p.exists() else {}
        entries[key] = cost.to_json()
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(dict(sorted(entries.items())), f, indent=2, ensure_ascii=False)
                f.write("\n")
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def measured_source(command: str, details: str = "", today: _dt.date | None = None) -> str:
    """The source string of a benchmark's own measurement:
    `measured here: <command> on <YYYY-MM-DD>, <n>-core machine; <details>`."""
    day = (today or _dt.date.today()).isoformat()
    text = f"measured here: {command} on {day}, {os.cpu_count()}-core machine"
    return f"{text}; {details}" if details else text


def get(costs: Mapping[str, UnitCost], key: str) -> UnitCost:
    """`costs[key]`, with an error that says which file lacks it."""
    try:
        return costs[key]
    except KeyError:
        raise KeyError(f"unit cost {key!r} missing from the cost file ({DEFAULT_PATH.name})") from None
