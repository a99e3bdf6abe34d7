"""The table of stages: one row per stage, with everything the runner, the CLI, `status` and the
funnel need to know about it, without importing it.

A stage is a function `run(out, wf, client, **options) -> StageReport` named by `entry`
("module:function"), imported only when the stage runs: building the CLI or planning a run never
imports torch. Adding a stage is one row here plus its module; `laion-pipe NAME --out DIR`,
`laion-pipe run --stages NAME`, `laion-pipe status` and the output folder follow from the row.

The flags say what a stage takes part in, so a stage need not be forced into all of it:
- `curation`: a Dask-partitioned curation stage; `laion-pipe run` runs these by default, in
  table order (`PIPELINE`). A stage that is not (training, evaluation) runs when named
  (`--stages select:train`) and may ignore the Dask client it is given.
- `funnel`: it counts pairs in and out with drop reasons (`FUNNEL_STAGES`, read by the stats).

This module imports nothing from the package, so `schema` can derive its names from it. The
constants below are computed once; code that must see the table as it is now (tests add rows)
calls `names()` and `get()`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """An extra option of a stage's subcommand, and where its value goes: a keyword argument of
    the stage's `run` (`kwarg`), or a workflow value (`override`, a dotted key; the value is
    set as with `--set`). An unset option (None, False, an empty list) passes nothing."""

    flags: tuple[str, ...]
    help: str
    kwarg: str | None = None
    override: str | None = None
    action: str | None = None
    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    metavar: str | None = None

    def __post_init__(self) -> None:
        if (self.kwarg is None) == (self.override is None):
            raise ValueError(f"option {self.flags}: give exactly one of kwarg= and override=")

    @property
    def dest(self) -> str:
        """The argparse attribute the value lands in."""
        first = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return first.lstrip("-").replace("-", "_")

    def argparse_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"help": self.help}
        for name in ("action", "type", "nargs", "metavar"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.flags[0].startswith("-"):
            kw["dest"] = self.dest
        return kw


@dataclass(frozen=True)
class Stage:
    """One stage: its name, where its code is, where its outputs go, what it takes part in, and
    its subcommand's help. `after` names the stage whose outputs it reads. `cli=False` when the stage brings its own subcommand (stats reads
    parquet files too, not only a run directory). `dask=False` for a stage that does not use the
    Dask client (training under accelerate): its own subcommand starts no cluster and passes
    `client=None`; inside `laion-pipe run` it gets the run's client and ignores it."""

    name: str
    entry: str
    out_dir: str
    curation: bool
    funnel: bool
    help: str
    description: str
    options: tuple[Option, ...] = ()
    cli: bool = True
    dask: bool = True
    after: str | None = None
    """The stage whose outputs this one reads. Run without it on a run directory where it never
    ran, the stage is a usage error that names what it looked for (not "0 partitions")."""
    check: str | None = None
    """"module:function" called as `fn(wf)` before any cluster starts or run directory is made:
    raises ConfigError for inputs that cannot work (an unreadable crawl listing), and returns
    how many partitions the stage will have (a local cluster starts no more workers)."""

    def load_check(self) -> Callable[..., Any] | None:
        """The stage's `check` function, or None (imports its module now, not before)."""
        return None if self.check is None else _import(self.check)

    def load(self) -> Callable[..., Any]:
        """The stage's `run` function (imports its module now, not before)."""
        return _import(self.entry)


def _import(spec: str) -> Callable[..., Any]:
    """The function a "module:function" string names ("module" alone: its `run`)."""
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func or "run")


STAGE_TABLE: tuple[Stage, ...] = (
    Stage(
        name="extract",
        entry="laion_pipe.stages.extract:run",
        check="laion_pipe.stages.extract:check",
        out_dir="candidates",
        curation=True,
        funnel=True,
        help="Common Crawl WAT/WARC files or URL lists -> candidates/{en,multi,nolang}/part-NNNNN.parquet",
        description="Parse WAT or WARC files into (image URL, alt text) pairs with LAION-5B's rules, or read URL lists "
        "(parquet, CSV, TSV, JSON lines, text: img2dataset's inputs, their other columns kept), all gzip or plain and "
        "detected from content; detect each text's language with fastText (or take a list's own) and split into "
        "EN / MULTI / NOLANG. One output partition per input file (a large list: per row groups or byte range).",
        options=(
            Option(("inputs",), nargs="*", metavar="INPUT", override="inputs",
                   help="WAT/WARC files or URL lists: local paths, globs, fsspec URLs (s3://, https://), or a crawl id "
                        "such as CC-MAIN-2023-14; default: the workflow's inputs"),
            Option(("--max-files",), type=int, metavar="N", override="extract.max_files",
                   help="with a crawl id: take the first N WAT files of its wat.paths.gz"),
        ),
    ),
    Stage(
        name="dedup",
        entry="laion_pipe.stages.dedup:run",
        after="extract",
        out_dir="unique",
        curation=True,
        funnel=True,
        help="global exact dedup and blocklists -> unique/{subset}/part-NNNNN.parquet",
        description="Deduplicate all candidates of the run (by url, or by url+text), apply domain / URL-hash / "
        "already-curated blocklists, and cut the survivors into fixed-size parts (one download shard each).",
    ),
    Stage(
        name="download",
        entry="laion_pipe.stages.download:run",
        after="dedup",
        out_dir="images",
        curation=True,
        funnel=True,
        help="fetch images -> images/{subset}/NNNNN.tar (img2dataset format)",
        description="Download, check and resize the images of every unique part, refusing non-public addresses "
        "and honouring X-Robots-Tag opt-outs. Output is img2dataset's format.",
        options=(
            Option(("--retry-failed",), action="store_true", kwarg="retry_failed",
                   help="refetch only samples that failed for a transient reason (timeouts, 5xx, 429) in done shards, "
                        "and merge them (with --force: redo every shard instead)"),
        ),
    ),
    Stage(
        name="score",
        entry="laion_pipe.stages.score:run",
        after="download",
        out_dir="scores",
        curation=True,
        funnel=True,
        help="CLIP similarity, punsafe, pwatermark, aesthetic -> scores/{subset}/NNNNN.parquet",
        description="Score every downloaded image: image-text cosine similarity, NSFW and watermark probabilities "
        "and aesthetic score. Uses a GPU when the worker has one.",
    ),
    Stage(
        name="select",
        entry="laion_pipe.stages.select:run",
        after="score",
        out_dir="dataset",
        curation=True,
        funnel=True,
        help="apply thresholds -> dataset/{name}/NNNNN.tar + parquet (LAION-5B columns)",
        description="Apply the thresholds and subset recipes to the scores and write the final WebDataset shards. "
        "Changing a threshold reruns only this stage.",
    ),
    Stage(
        name="index",
        entry="laion_pipe.stages.index:run",
        check="laion_pipe.stages.index:check",
        after="select",
        out_dir="index",
        curation=True,
        funnel=False,
        help="faiss kNN indexes of the CLIP image and caption embeddings -> index/{space}/ (what `laion-pipe serve` searches)",
        description="Index every scored pair, kept or dropped, by its CLIP image and caption embeddings (saved by the score "
        "stage, score.save_embeddings) in clip-retrieval's layout: image.index, text.index and metadata/ row-aligned with "
        "them, each row saying whether select kept the pair and why not. Exact search for small runs, IVF-PQ trained on a "
        "sample and built on the Dask workers for large ones (index: section).",
    ),
    Stage(
        name="stats",
        entry="laion_pipe.stages.stats:run",
        out_dir="stats",
        curation=True,
        funnel=False,
        help="LAION's subset statistics tables, plots and report.html",
        description="Compute the LAION-5B statistics table per subset (counts by resolution, % NSFW, % watermark, "
        "average text length), top languages and domains, histograms and the funnel.",
        cli=False,
    ),
    Stage(
        name="train",
        entry="laion_pipe.train.stage:run",
        after="select",
        out_dir="train",
        curation=False,
        funnel=False,
        dask=False,
        help="train a text-to-image diffusion model on dataset/{name} -> train/{name}/ (diffusers layout)",
        description="Train the workflow's `train:` model (Stable Diffusion v1 family from a pipeline directory or hub id, "
        "or the small demo model) on the run's dataset shards with diffusers and accelerate: checkpoints, resume, "
        "metrics.jsonl, validation grids, final/ loadable with from_pretrained. Several processes per node run "
        "under torchrun (train.launch).",
    ),
    Stage(
        name="evaluate",
        entry="laion_pipe.evaluate.stage:run",
        after="train",
        out_dir="eval",
        curation=False,
        funnel=False,
        dask=False,
        help="generate images for held-out prompts -> eval/{model}/ (CLIP score, retrieval, FD-CLIP, grid)",
        description="Generate images for evaluation prompts (held out by the train stage, or a file) with "
        "classifier-free guidance, and score them with the run's CLIP: CLIP score, top-1 prompt retrieval "
        "accuracy and the Frechet distance between CLIP image embeddings of generated and held-out real images.",
        options=(
            Option(("--model",), metavar="PATH", override="evaluate.model",
                   help="a train name of this run or a model folder (final/ or checkpoint-N/; one inside RUN/train/NAME/ uses "
                        "NAME's held-out prompts); default: the workflow's train.name"),
            Option(("--prompts",), metavar="FILE", override="evaluate.prompts",
                   help="a file of prompts, one per line; default: the prompts the train stage held out"),
        ),
    ),
)
"""Every stage, in the order they run and `status` lists them."""



def names(*, curation: bool | None = None, funnel: bool | None = None) -> tuple[str, ...]:
    """Stage names in table order, those with the given flags only (None: either)."""
    return tuple(
        s.name for s in STAGE_TABLE
        if (curation is None or s.curation == curation) and (funnel is None or s.funnel == funnel)
    )  # fmt: skip


class UnknownStage(ValueError):
    """A stage name that is not in the table."""


def get(name: str) -> Stage:
    for s in STAGE_TABLE:
        if s.name == name:
            return s
    raise UnknownStage(f"unknown stage {name!r}; stages are {', '.join(names())}")


ORDER: tuple[str, ...] = names()
PIPELINE: tuple[str, ...] = names(curation=True)
"""What `laion-pipe run` runs by default: the curation stages, extract .. stats."""
FUNNEL_STAGES: tuple[str, ...] = names(funnel=True)
"""The stages whose pairs in and out (with drop reasons) make the funnel: extract .. select."""
STAGE_DIRS: dict[str, str] = {s.name: s.out_dir for s in STAGE_TABLE}
"""Each stage's top-level output folder in a run directory."""
