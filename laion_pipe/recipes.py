"""Subset recipes: which scored pairs go into which dataset folder, and why the others do not.

A recipe is a set of bounds over the score and size columns. `select` evaluates every recipe on
the same scores, so a new recipe or a changed bound costs a pass over parquet files and tars,
never a model run. Each dropped pair gets exactly one reason, the first bound it fails in
`CHECK_ORDER` (similarity first, as LAION filtered), so per-reason counts add up to the drops.

The recipes' configuration, the shipped presets included, is `config/presets.py`'s: this module
evaluates it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .config.presets import PRESETS, RecipeConfig
from .config.select import SelectConfig
from .schema import SUBSETS

__all__ = ["CHECK_ORDER", "CODE_REASONS", "DUPLICATE_REASONS", "KEEP", "PRESETS", "Recipe", "apply_duplicates", "count_reasons",
           "resolve_recipes", "score_columns"]

CHECK_ORDER: tuple[str, ...] = ("low_similarity", "side_too_small", "unsafe", "watermark", "low_aesthetic", "blocked_url_hash")
"""Drop reasons; index + 1 is the code `reasons()` returns. The bounds are checked in this order,
after the blocklist: a pair whose URL is on `select.blocked_url_hashes` is `blocked_url_hash`
whatever its scores (its removal was asked for by name, as dedup checks its blocklists first)."""

BLOCKED = "blocked_url_hash"
DUPLICATE_REASONS: tuple[str, ...] = ("near_duplicate", "semantic_duplicate")
"""Near-duplicate removal's reasons (laion_pipe.neardup): given only to pairs every bound keeps, so
a pair is counted once, and a copy is counted as a copy only where it would have been kept."""
CODE_REASONS: tuple[str, ...] = CHECK_ORDER + DUPLICATE_REASONS
"""Every reason a code can stand for: code c > 0 is CODE_REASONS[c - 1]."""

KEEP = 0


@dataclass(frozen=True)
class Recipe:
    """A recipe with every default resolved: what `select` evaluates and fingerprints."""

    name: str
    subsets: tuple[str, ...]
    min_similarity: tuple[tuple[str, float], ...]  # per subset
    min_width: int = 0
    min_height: int = 0
    min_aesthetic: float | None = None
    max_pwatermark: float | None = None
    max_punsafe: float | None = None
    greater_than: tuple[str, ...] = ()
    blocked_url_hashes: tuple[tuple[str, str], ...] = ()  # (path, file identity) of URL-hash lists
    funnel: bool = False  # a default language-subset recipe: its drops are the pipeline's funnel
    description: str = ""

    def identity(self) -> dict:
        """What decides which pairs the recipe keeps (the fingerprint input)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("description", "funnel")}
        if not self.blocked_url_hashes:  # runs without a blocklist keep the fingerprints they had
            del d["blocked_url_hashes"]
        return d

    def reasons(self, subset: str, cols: dict[str, np.ndarray]) -> np.ndarray:
        """Per row: 0 = keep, else 1 + index of the first failed bound in CHECK_ORDER.

        `cols` holds float arrays similarity, punsafe, pwatermark, aesthetic (compared in their own
        precision) and width, height (original size), and `url` when the recipe has a blocklist.
        NaN fails any bound that asks for it."""
        n = len(cols["similarity"])
        code = np.zeros(n, dtype=np.int8)

        def apply(fail: np.ndarray, reason: str) -> None:
            code[(code == KEEP) & fail] = CHECK_ORDER.index(reason) + 1

        if self.blocked_url_hashes:
            from .blocklists import load_url_hashes, url_hash_mask

            paths, ids = zip(*self.blocked_url_hashes)
            urls = cols["url"]
            if not isinstance(urls, (pa.Array, pa.ChunkedArray)):
                urls = pa.array(list(urls), pa.string())
            apply(url_hash_mask(urls, load_url_hashes(paths, ids)), BLOCKED)

        strict = set(self.greater_than)

        def below(values: np.ndarray, bound: float, name: str) -> np.ndarray:
            values, b = _same_precision(values, bound)
            ok = values > b if name in strict else values >= b
            return ~ok  # NaN compares False -> fails

        def at_least(values: np.ndarray, bound: float) -> np.ndarray:
            values, b = _same_precision(values, bound)
            return ~(values < b)  # NaN fails too

        sim_min = dict(self.min_similarity)[subset]
        apply(below(cols["similarity"], sim_min, "similarity"), "low_similarity")
        if self.min_width or self.min_height or {"width", "height"} & strict:
            small = below(cols["width"], self.min_width, "width") | below(cols["height"], self.min_height, "height")
            apply(small, "side_too_small")
        if self.max_punsafe is not None:
            apply(at_least(cols["punsafe"], self.max_punsafe), "unsafe")
        if self.max_pwatermark is not None:
            apply(at_least(cols["pwatermark"], self.max_pwatermark), "watermark")
        if self.min_aesthetic is not None:
            apply(below(cols["aesthetic"], self.min_aesthetic, "aesthetic"), "low_aesthetic")
        return code


def _same_precision(values: np.ndarray, bound: float) -> tuple[np.ndarray, np.floating]:
    """`values` and `bound` in the values' own float precision. Scores are float32: a pair
    scored exactly float32(0.26) must pass `>= 0.26`, which it fails once widened to float64
    (float32(0.26) = 0.2599999904...). Rounding the bound to the scores' precision compares
    what the score stage could have written. Integer columns (sides) compare as float64 (exact)."""
    values = np.asarray(values)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    return values, values.dtype.type(bound)


def count_reasons(codes: np.ndarray) -> Counter:
    """Drop reason -> count for an array of `Recipe.reasons` codes (keeps not counted)."""
    out: Counter = Counter()
    values, counts = np.unique(codes[codes != KEEP], return_counts=True)
    for v, c in zip(values.tolist(), counts.tolist()):
        out[CODE_REASONS[v - 1]] = c
    return out


def apply_duplicates(codes: np.ndarray, keys: list[str], drops: dict[str, str] | None) -> np.ndarray:
    """`codes` with the near-duplicate reason (`drops`: key -> reason) of every row still kept."""
    if not drops:
        return codes
    out = codes.copy()
    for i, k in enumerate(keys):
        reason = drops.get(k)
        if reason is not None and out[i] == KEEP:
            out[i] = CODE_REASONS.index(reason) + 1
    return out


def _resolve(name: str, cfg: RecipeConfig, similarity: dict[str, float], funnel: bool = False,
             blocked: tuple[tuple[str, str], ...] = ()) -> Recipe:
    subsets = tuple(s for s in SUBSETS if s in cfg.subsets)  # canonical order
    sim = tuple((s, float(cfg.min_similarity if cfg.min_similarity is not None else similarity[s])) for s in subsets)
    return Recipe(
        name=name,
        subsets=subsets,
        min_similarity=sim,
        min_width=cfg.min_width,
        min_height=cfg.min_height,
        min_aesthetic=cfg.min_aesthetic,
        max_pwatermark=cfg.max_pwatermark,
        max_punsafe=cfg.max_punsafe,
        greater_than=tuple(sorted(set(cfg.greater_than))),
        blocked_url_hashes=blocked,
        funnel=funnel,
        description=cfg.description,
    )


def resolve_recipes(cfg: SelectConfig) -> list[Recipe]:
    """Every recipe the `select:` section asks for: the language subsets (unless turned off),
    then the presets, then the named recipes, in that order. `select.blocked_url_hashes` applies
    to every recipe; a list that is missing or malformed is an error here, before any work."""
    out: list[Recipe] = []
    blocked = blocklist_identities(cfg.blocked_url_hashes)
    if cfg.default_recipes:
        for s in SUBSETS:
            rc = RecipeConfig(
                subsets=[s],
                min_similarity=cfg.similarity[s],
                min_width=cfg.min_side,
                min_height=cfg.min_side,
                min_aesthetic=cfg.min_aesthetic,
                max_pwatermark=cfg.max_pwatermark,
                max_punsafe=cfg.max_punsafe,
                description=f"LAION-5B's {s} subset",
            )
            out.append(_resolve(s, rc, cfg.similarity, funnel=True, blocked=blocked))
    for name in cfg.presets:
        out.append(_resolve(name, PRESETS[name], cfg.similarity, blocked=blocked))
    for name, rc in cfg.recipes.items():
        out.append(_resolve(name, rc, cfg.similarity, blocked=blocked))
    return out


def blocklist_identities(paths: list[str]) -> tuple[tuple[str, str], ...]:
    """((path, identity), ...) of URL-hash lists, each loaded once here so that a missing file or
    a malformed line fails before any work; the identities key the recipes' fingerprints (a list
    edited in place reruns select) and the per-worker cache."""
    from . import fsio
    from .blocklists import load_url_hashes
    from .config import ConfigError

    found = []
    for path in paths:
        try:
            found.append((path, fsio.fingerprint_of(path)))
        except FileNotFoundError:
            raise ConfigError(f"select.blocked_url_hashes: {path!r} not found") from None
    if found:
        try:
            load_url_hashes([p for p, _ in found], [i for _, i in found])
        except ValueError as e:
            raise ConfigError(f"select.blocked_url_hashes: {e}") from None
    return tuple(found)


def score_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The arrays `Recipe.reasons` reads, from a joined scores + download table."""

    def score(name: str) -> np.ndarray:
        """A score column in its own precision (float32 as written), nulls as NaN."""
        col = table.column(name)
        dtype = np.float32 if pa.types.is_float32(col.type) else np.float64
        return col.to_numpy(zero_copy_only=False).astype(dtype)

    def side(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    return {
        "similarity": score("similarity"),
        "punsafe": score("punsafe"),
        "pwatermark": score("pwatermark"),
        "aesthetic": score("aesthetic"),
        "width": side("original_width"),
        "height": side("original_height"),
        **({"url": table.column("url")} if "url" in table.column_names else {}),
    }
