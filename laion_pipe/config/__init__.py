"""Workflow configuration: YAML validated into typed pydantic models before any work starts.

A wrong key or value is a `ConfigError` naming the dotted key, e.g. `download.timout: unknown key`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from .base import Section
from .cluster import ClusterConfig
from .dedup import DedupConfig
from .download import DownloadConfig
from .evaluate import EvaluateConfig
from .extract import ExtractConfig
from .index import IndexConfig
from .models import ModelsConfig
from .runner import RunnerConfig
from .score import ScoreConfig
from .select import SelectConfig
from .stats import StatsConfig
from .train import TrainConfig

__all__ = ["ConfigError", "Workflow", "load_workflow", "apply_overrides", "workflow_from_dict"]


class ConfigError(ValueError):
    """A workflow that cannot run: the message names the offending key."""


class Workflow(Section):
    name: str = "run"
    inputs: list[str] = Field([], description="WAT/WARC files or URL lists (paths, globs, URLs), or crawl ids")
    out: str | None = Field(None, description="run directory (local path or fsspec URL)")
    cluster: ClusterConfig = ClusterConfig()
    runner: RunnerConfig = RunnerConfig()
    extract: ExtractConfig = ExtractConfig()
    dedup: DedupConfig = DedupConfig()
    download: DownloadConfig = DownloadConfig()
    models: ModelsConfig = ModelsConfig()
    score: ScoreConfig = ScoreConfig()
    select: SelectConfig = SelectConfig()
    index: IndexConfig = IndexConfig()
    stats: StatsConfig = StatsConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _semantic_dedup_needs_embeddings(self) -> Workflow:
        if self.select.neardup.semantic and not self.score.save_embeddings:
            raise ValueError("select.neardup.semantic: SemDeDup reads the score stage's CLIP image embeddings; "
                             "set score.save_embeddings: true too")
        return self


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return "invalid workflow:\n  " + "\n  ".join(lines)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (numbers, lists, null...)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        _set_path(data, key, value)
    return data


DEMO_PREFIX = "demo:"


def resolve_demo_paths(data: Any) -> Any:
    """Replace `demo:FILE` strings by the path of FILE among the demo weights shipped in the
    package, so a workflow file can name them wherever the package is installed."""
    if isinstance(data, dict):
        return {k: resolve_demo_paths(v) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_demo_paths(v) for v in data]
    if isinstance(data, str) and data.startswith(DEMO_PREFIX):
        from importlib import resources

        name = data[len(DEMO_PREFIX):]
        path = resources.files("laion_pipe.models.demo") / "weights" / name
        if not path.is_file():
            raise ConfigError(f"{data}: no such file among the shipped demo weights ({path})")
        return str(path)
    return data


def workflow_from_dict(data: dict | None, overrides: list[str] | None = None) -> Workflow:
    data = resolve_demo_paths(apply_overrides(dict(data or {}), overrides))
    try:
        return Workflow.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def load_workflow(path: str | Path | None, overrides: list[str] | None = None) -> Workflow:
    """Load a workflow YAML (or the defaults when path is None) and apply `--set` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"workflow file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a workflow is a mapping of sections, got {type(data).__name__}")
    return workflow_from_dict(data, overrides)
