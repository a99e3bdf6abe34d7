"""Per-partition pieces of the statistics: pure pandas functions that Dask maps over each parquet
partition and then sums.

Every number the table needs is a sum of per-row counters (pairs, pairs above a size, flagged
pairs, scored pairs, text characters...), and every histogram is a sum of per-partition bin
counts over fixed edges. So one partition turns into one small row of integers, and the whole
dataset into the sum of those rows: a tree reduction that never brings a data row to the driver.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .model import SIZES, Counts

HISTOGRAMS: tuple[str, ...] = ("similarity", "text_length", "width", "height")
COUNT_FIELDS: tuple[str, ...] = tuple(Counts.__dataclass_fields__)

# Scheme, optional user-info, then the host (a bracketed IPv6 literal, or up to a port, path, query
# or fragment).
_HOST_RE = r"^[A-Za-z][A-Za-z0-9+.\-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]/?#]*\]|[^:/?#]+)"


@dataclass(frozen=True)
class Spec:
    """What a partition needs to know to count: thresholds and histogram edges (picklable)."""

    nsfw_threshold: float
    watermark_threshold: float
    edges: tuple[tuple[str, tuple[float, ...]], ...]  # histogram name -> bin edges

    @classmethod
    def from_config(cls, cfg) -> Spec:
        lo, hi = cfg.similarity_range
        sim = np.linspace(lo, hi, cfg.similarity_bins + 1)
        text = np.linspace(0, cfg.text_length_max, cfg.text_length_bins + 1)
        size = tuple(float(e) for e in cfg.size_edges)
        return cls(
            nsfw_threshold=cfg.nsfw_threshold,
            watermark_threshold=cfg.watermark_threshold,
            edges=(
                ("similarity", tuple(float(e) for e in sim)),
                ("text_length", tuple(float(e) for e in text)),
                ("width", size),
                ("height", size),
            ),
        )

    def edges_of(self, name: str) -> tuple[float, ...]:
        return dict(self.edges)[name]

    def columns(self) -> list[str]:
        """The columns of one partial row, in order: counters, then each histogram's bins."""
        cols = list(COUNT_FIELDS)
        for name, edges in self.edges:
            cols += [f"{name}_{i}" for i in range(len(edges) - 1)]
        return cols

    def meta(self) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series([], dtype="int64") for c in self.columns()})


def _numeric(pdf: pd.DataFrame, column: str) -> np.ndarray:
    """A column as float64 with NaN for missing values, or all-NaN when the file lacks it
    (LAION's EN metadata has no LANGUAGE, some older files no pwatermark)."""
    if column not in pdf.columns:
        return np.full(len(pdf), np.nan)
    return pd.to_numeric(pdf[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _scores(pdf: pd.DataFrame, column: str, threshold: float) -> tuple[np.ndarray, np.floating]:
    """A score column in its own float precision, and the threshold in that same precision.

    Scores are stored as float32: a pwatermark written as 0.8 reads back as 0.800000012, which a
    float64 comparison would count as "> 0.8". Comparing at the column's precision keeps a score
    equal to the threshold on the side the threshold's definition puts it."""
    if column in pdf.columns:
        values = pdf[column]
        dtype = values.dtype.numpy_dtype if hasattr(values.dtype, "numpy_dtype") else values.dtype
        if np.issubdtype(dtype, np.floating):
            arr = values.to_numpy(dtype=dtype, na_value=np.nan)
            return arr, dtype.type(threshold)
    return _numeric(pdf, column), np.float64(threshold)


def bin_counts(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Counts per bin over `edges`; NaN is skipped, values below the first edge go to the first
    bin and values above the last edge to the last (so the bins always sum to the scored rows)."""
    values = values[~np.isnan(values)]
    nbins = len(edges) - 1
    idx = np.searchsorted(np.asarray(edges), values, side="right") - 1
    idx = np.clip(idx, 0, nbins - 1)
    return np.bincount(idx, minlength=nbins).astype("int64")


def partial_counts(pdf: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """One partition -> one row of counters and histogram bins (see Spec.columns)."""
    width, height = _numeric(pdf, "WIDTH"), _numeric(pdf, "HEIGHT")
    punsafe, nsfw_threshold = _scores(pdf, "punsafe", spec.nsfw_threshold)
    pwatermark, watermark_threshold = _scores(pdf, "pwatermark", spec.watermark_threshold)
    if "TEXT" in pdf.columns:
        lengths = pd.to_numeric(pdf["TEXT"].str.len(), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    else:
        lengths = np.full(len(pdf), np.nan)
    with np.errstate(invalid="ignore"):
        row: dict[str, int] = {
            "count": len(pdf),
            **{f"gt{n}": int(np.count_nonzero((width >= n) & (height >= n))) for n in SIZES},
            "nsfw": int(np.count_nonzero(punsafe > nsfw_threshold)),
            "nsfw_scored": int(np.count_nonzero(~np.isnan(punsafe))),
            "watermark": int(np.count_nonzero(pwatermark > watermark_threshold)),
            "watermark_scored": int(np.count_nonzero(~np.isnan(pwatermark))),
            "text_chars": int(np.nansum(lengths)),
            "text_count": int(np.count_nonzero(~np.isnan(lengths))),
        }
    values = {
        "similarity": _numeric(pdf, "similarity"),
        "text_length": lengths,
        "width": width,
        "height": height,
    }
    for name, edges in spec.edges:
        for i, n in enumerate(bin_counts(values[name], edges)):
            row[f"{name}_{i}"] = int(n)
    return pd.DataFrame({c: [row[c]] for c in spec.columns()}, dtype="int64")


def hosts(urls: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The host of each URL, lower-cased, without a leading "www."/"www2." (null where there is
    none): what "top domains" counts, so www.example.com and example.com are one domain.
    Arrow kernels (RE2), not Python per row: this runs on every URL of the dataset."""
    found = pc.struct_field(pc.extract_regex(urls, _HOST_RE), [0])
    return pc.replace_substring_regex(pc.utf8_lower(found), r"^www\d*\.", "")


def _arrow_strings(series: pd.Series) -> pa.Array | pa.ChunkedArray:
    return pa.array(series, type=pa.string(), from_pandas=True)


def domains(urls: pd.Series) -> pd.Series:
    """`hosts` of a pandas Series of URLs, as a pandas string Series named "domain"."""
    return pd.Series(hosts(_arrow_strings(urls)), index=urls.index, dtype="string", name="domain")


VALUE_COUNTS_META = pd.DataFrame({"value": pd.Series([], dtype="string"), "n": pd.Series([], dtype="int64")})


def _value_counts(values: pa.Array | pa.ChunkedArray) -> pd.DataFrame:
    vc = pc.value_counts(pc.drop_null(values))
    return pd.DataFrame({
        "value": pd.Series(vc.field("values").to_pylist(), dtype="string"),
        "n": vc.field("counts").to_numpy(zero_copy_only=False).astype("int64"),
    })


def domain_counts(pdf: pd.DataFrame) -> pd.DataFrame:
    """One partition -> (domain, pairs) rows: counted where the data is, so only distinct
    domains per partition travel to the reduction."""
    return _value_counts(hosts(_arrow_strings(pdf["URL"])))


def language_counts(pdf: pd.DataFrame) -> pd.DataFrame:
    """One partition -> (LANGUAGE, pairs) rows, missing languages not counted."""
    return _value_counts(_arrow_strings(pdf["LANGUAGE"]))
