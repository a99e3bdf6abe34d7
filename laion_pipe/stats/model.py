"""The statistics of a dataset as plain data: LAION's table rows, histograms, top lists, funnel.

Everything here is already aggregated (a few hundred numbers per subset), so it can travel to the
driver, into JSON, the report and the notebook. `to_dict`/`from_dict` round-trip exactly, which
lets the notebook load `stats/stats.json` instead of recomputing over billions of rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..schema import ANY_SUBSET, SUBSETS

SIZES: tuple[int, ...] = (256, 512, 1024)
"""LAION's table columns: pairs with WIDTH >= n and HEIGHT >= n."""

TABLE_KEYS: tuple[str, ...] = ("subset", "count", "gt256", "gt512", "gt1024", "nsfw_pct", "watermark_pct", "avg_text_len")
"""The keys of one table row in `--json` output and `table.json` (the issue's contract)."""

TOTAL = "total"


def _pct(part: int, whole: int) -> float | None:
    return None if whole == 0 else 100.0 * part / whole


@dataclass
class Counts:
    """Additive counters of one subset: every table value is a ratio of two of these, so the
    total row is the sum of the subset counters, never an average of averages."""

    count: int = 0
    gt256: int = 0
    gt512: int = 0
    gt1024: int = 0
    nsfw: int = 0
    nsfw_scored: int = 0  # rows with a punsafe value (the NSFW percentage's denominator)
    watermark: int = 0
    watermark_scored: int = 0
    text_chars: int = 0
    text_count: int = 0  # rows with a TEXT value (the average length's denominator)

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    @property
    def nsfw_pct(self) -> float | None:
        return _pct(self.nsfw, self.nsfw_scored)

    @property
    def watermark_pct(self) -> float | None:
        return _pct(self.watermark, self.watermark_scored)

    @property
    def avg_text_len(self) -> float | None:
        return None if self.text_count == 0 else self.text_chars / self.text_count


@dataclass
class Histogram:
    """Counts per bin; `edges` has one more entry than `counts`. `open_end` says the last bin
    also holds everything above the last edge (and the first everything below the first)."""

    edges: list[float]
    counts: list[int]
    open_end: bool = True

    def __add__(self, other: Histogram) -> Histogram:
        if list(self.edges) != list(other.edges):
            raise ValueError("cannot add histograms with different bin edges")
        return Histogram(list(self.edges), [a + b for a, b in zip(self.counts, other.counts)], self.open_end)

    @property
    def total(self) -> int:
        return int(sum(self.counts))


@dataclass
class SubsetStats:
    """Everything the stats know about one subset (or the total)."""

    subset: str
    counts: Counts
    histograms: dict[str, Histogram] = field(default_factory=dict)  # similarity, text_length, width, height
    languages: list[tuple[str, int]] = field(default_factory=list)  # most frequent first
    domains: list[tuple[str, int]] = field(default_factory=list)  # most frequent first
    files: int = 0

    def row(self, ndigits: int | None = 4) -> dict[str, Any]:
        """The table row with the issue's keys; percentages and the average rounded to `ndigits`
        (None: unrounded). A percentage with nothing scored is None."""
        c = self.counts

        def r(x: float | None) -> float | None:
            return x if x is None or ndigits is None else round(x, ndigits)

        return {
            "subset": self.subset,
            "count": c.count,
            "gt256": c.gt256,
            "gt512": c.gt512,
            "gt1024": c.gt1024,
            "nsfw_pct": r(c.nsfw_pct),
            "watermark_pct": r(c.watermark_pct),
            "avg_text_len": r(c.avg_text_len),
        }


@dataclass
class FunnelStage:
    """One pipeline stage as the manifests saw it: partitions by status, pairs out per subset,
    drops per subset and reason (subset "*" = dropped before a subset was known)."""

    stage: str
    done: int = 0
    failed: int = 0
    pending: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def dropped(self, subset: str) -> int:
        return int(sum(self.drops.get(subset, {}).values()))

    def pairs_in(self, subset: str) -> int:
        """Pairs that entered the stage: those it kept plus those it dropped with a reason."""
        return self.kept.get(subset, 0) + self.dropped(subset)

    def subsets(self) -> list[str]:
        keys = set(self.kept) | set(self.drops)
        ordered = [s for s in SUBSETS if s in keys] + sorted(keys - set(SUBSETS) - {ANY_SUBSET})
        return ordered + ([ANY_SUBSET] if ANY_SUBSET in keys else [])


@dataclass
class StatsResult:
    """The statistics of one run directory or one set of LAION-schema parquet files."""

    source: str
    subsets: list[SubsetStats]  # the language subsets (or the one labelled input), in table order
    total: SubsetStats | None = None  # sum of `subsets` when there is more than one
    others: list[SubsetStats] = field(default_factory=list)  # other dataset/ folders, not in the total
    funnel: list[FunnelStage] = field(default_factory=list)
    nsfw_threshold: float = 0.5
    watermark_threshold: float = 0.8
    swap_wh: bool = False

    def main_rows(self) -> list[SubsetStats]:
        return self.subsets + ([self.total] if self.total is not None else [])

    def all_rows(self) -> list[SubsetStats]:
        return self.main_rows() + self.others

    def to_json(self) -> list[dict[str, Any]]:
        """The table as `--json` prints it: one object per subset (then the total, then other
        dataset folders), with exactly the keys of TABLE_KEYS."""
        return [s.row() for s in self.all_rows()]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["table"] = self.to_json()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StatsResult:
        def subset(x: dict | None) -> SubsetStats | None:
            if x is None:
                return None
            return SubsetStats(
                subset=x["subset"],
                counts=Counts(**x["counts"]),
                histograms={k: Histogram(**h) for k, h in x.get("histograms", {}).items()},
                languages=[(str(a), int(b)) for a, b in x.get("languages", [])],
                domains=[(str(a), int(b)) for a, b in x.get("domains", [])],
                files=x.get("files", 0),
            )

        return cls(
            source=d["source"],
            subsets=[subset(x) for x in d["subsets"]],  # type: ignore[misc]
            total=subset(d.get("total")),
            others=[subset(x) for x in d.get("others", [])],  # type: ignore[misc]
            funnel=[FunnelStage(**f) for f in d.get("funnel", [])],
            nsfw_threshold=d.get("nsfw_threshold", 0.5),
            watermark_threshold=d.get("watermark_threshold", 0.8),
            swap_wh=d.get("swap_wh", False),
        )
