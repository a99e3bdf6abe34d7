"""Dataset statistics: LAION-5B's table per subset, histograms, top lists and the funnel,
computed as Dask aggregations over the metadata parquet, and rendered as text, plots and HTML.

`laion_pipe.stages.stats` wires this into the pipeline and the CLI.
"""
from .aggregate import StatsInputError, compute
from .model import TABLE_KEYS, StatsResult

__all__ = ["StatsInputError", "StatsResult", "TABLE_KEYS", "compute"]
