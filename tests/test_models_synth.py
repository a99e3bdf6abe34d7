"""The synthetic image-caption generator: determinism, ground truth, captions in four languages."""
from __future__ import annotations

import numpy as np
import pytest

from laion_pipe.models.demo import synth


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_samples_different_seed_differs():
    a = [synth.sample(np.random.default_rng(7), lang, watermark=0.5, degradation=0.5) for lang in synth.LANGS]
    b = [synth.sample(np.random.default_rng(7), lang, watermark=0.5, degradation=0.5) for lang in synth.LANGS]
    for (ia, ca, sa), (ib, cb, sb) in zip(a, b):
        assert ca == cb and sa == sb
        assert np.array_equal(_pixels(ia), _pixels(ib))
    c = synth.sample(np.random.default_rng(8), "en", watermark=0.5, degradation=0.5)
    assert c.attrs != a[0].attrs


@pytest.mark.parametrize(
    "scene, lang, expected",
    [
        (("circle", "red", "blue"), "en", "a red circle on a blue background"),
        (("diamond", "red", "blue"), "de", "eine rote Raute auf blauem Hintergrund"),
        (("square", "white", "black"), "de", "ein weißes Quadrat auf schwarzem Hintergrund"),
        (("star", "green", "white"), "fr", "une étoile verte sur fond blanc"),
        (("skull", "black", "grey"), "fr", "un crâne noir sur fond gris"),
        (("skull", "yellow", "red"), "es", "una calavera amarilla sobre fondo rojo"),
        (("ring", "white", "brown"), "es", "un anillo blanco sobre fondo marrón"),
    ],
)
def test_captions_are_grammatical(scene, lang, expected):
    assert synth.caption_for(*scene, lang) == expected


def test_unknown_language_is_an_error():
    with pytest.raises(ValueError, match="unknown caption language"):
        synth.caption_for("circle", "red", "blue", "it")


def test_all_captions_unique_per_language():
    for lang in synth.LANGS:
        caps = synth.all_captions(lang)
        assert len(caps) == len(set(caps)) == len(synth.SHAPES) * len(synth.COLOURS) * (len(synth.COLOURS) - 1)


def test_flags_give_their_ground_truth():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = synth.random_scene(rng, unsafe=True, watermark=True, degradation="jpeg")
        assert s.unsafe and s.shape == "skull" and s.watermarked and s.degradation == "jpeg"
        assert 0.4 <= s.severity <= 1.0 and 2.0 <= s.aesthetic <= 5.0
        clean = synth.random_scene(rng)
        assert not clean.unsafe and not clean.watermarked and clean.degradation is None
        assert clean.aesthetic == synth.CLEAN_AESTHETIC and clean.colour != clean.background
    with pytest.raises(ValueError, match="unknown degradation"):
        synth.random_scene(rng, degradation="sepia")


def test_probabilities_are_respected():
    rng = np.random.default_rng(1)
    scenes = [synth.random_scene(rng, unsafe=0.25, watermark=0.5, degradation=0.1) for _ in range(800)]
    assert 0.2 < np.mean([s.unsafe for s in scenes]) < 0.3
    assert 0.44 < np.mean([s.watermarked for s in scenes]) < 0.56
    assert 0.06 < np.mean([s.degradation is not None for s in scenes]) < 0.14


def test_watermark_and_degradation_change_the_pixels_of_the_same_scene():
    from dataclasses import replace

    rng = np.random.default_rng(3)
    marked = synth.random_scene(rng, watermark=True)
    plain = replace(marked, watermark=None, wm_layout=())
    diff = np.abs(_pixels(synth.render(marked)) - _pixels(synth.render(plain)))
    assert diff.max() > 60 and 0.002 < (diff.sum(-1) > 30).mean() < 0.6  # text, not a new image
    for kind in synth.DEGRADATIONS:
        bad = replace(plain, degradation=kind, severity=0.8)
        d = np.abs(_pixels(synth.render(bad)) - _pixels(synth.render(plain))).mean()
        assert d > 2, kind


def test_render_size_and_mode():
    s = synth.random_scene(np.random.default_rng(4), degradation=True, watermark=True)
    for size in (32, 64, 200):
        img = synth.render(s, size)
        assert img.size == (size, size) and img.mode == "RGB"


def test_shape_is_drawn_in_its_colour_on_its_background():
    rng = np.random.default_rng(5)
    for _ in range(10):
        s = synth.random_scene(rng)
        px = _pixels(synth.render(s, 128)).reshape(-1, 3)
        corner = _pixels(synth.render(s, 128))[0, 0]
        assert np.abs(corner - np.array(synth.COLOURS[s.background])).max() <= 16
        near_fill = (np.abs(px - np.array(synth.COLOURS[s.colour])).max(axis=1) <= 16).mean()
        assert near_fill > 0.03, s  # the shape covers a visible part of the image


def test_mismatched_captions():
    rng = np.random.default_rng(6)
    for lang in synth.LANGS:
        for _ in range(50):
            s = synth.random_scene(rng)
            assert synth.mismatched_caption(rng, s, lang) != s.caption(lang)
            hard = synth.mismatched_caption(rng, s, lang, hard=True)
            assert hard != s.caption(lang)
            # a hard negative changes one attribute or swaps the two colours
            candidates = {
                synth.caption_for(sh, c, b, lang)
                for sh in synth.SHAPES
                for c in synth.COLOURS
                for b in synth.COLOURS
                if c != b and (
                    sum([sh != s.shape, c != s.colour, b != s.background]) == 1
                    or (sh, c, b) == (s.shape, s.background, s.colour)
                )
            }
            assert hard in candidates


def test_quality_caption_names_the_degradation():
    rng = np.random.default_rng(9)
    s = synth.random_scene(rng, degradation="blur")
    assert s.quality_caption("en") == f"blurry photo: {s.caption('en')}"
    assert s.quality_caption("de").startswith("unscharfes Foto:")
    clean = synth.random_scene(rng)
    assert clean.quality_caption("fr") == clean.caption("fr")


def test_as_dict_carries_ground_truth():
    s = synth.random_scene(np.random.default_rng(2), unsafe=True)
    d = s.as_dict()
    assert d["unsafe"] is True and d["watermarked"] is False and d["shape"] == "skull"
