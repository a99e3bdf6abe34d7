"""The scoring models with the shipped demo weights, loaded through the same code as LAION's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from laion_pipe.config import ConfigError, workflow_from_dict
from laion_pipe.config.models import ClipModelConfig, ModelsConfig, NsfwModelConfig
from laion_pipe.models import DEMO_FILES, demo_models_config, demo_weights_dir
from laion_pipe.models.aesthetic import AestheticMLP, load_aesthetic
from laion_pipe.models.clip import ClipScorer, cached_clip, load_clip
from laion_pipe.models.demo import synth
from laion_pipe.models.nsfw import H14NsfwDetector, LaionNsfwHead, head_from_state_dict, load_nsfw
from laion_pipe.models.watermark import build_watermark_model, load_watermark
from laion_pipe.models.weights import load_state_dict, local_weights

HELD_OUT_SEED = 20_240_601  # never used by the training script (it trains with seed 0)


def auc(scores, labels) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count half."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auc_helper():
    assert auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auc([0.5, 0.5], [1, 0]) == 0.5


@pytest.fixture(scope="module")
def demo_cfg() -> ModelsConfig:
    return demo_models_config()


@pytest.fixture(scope="module")
def clip(demo_cfg) -> ClipScorer:
    torch.set_num_threads(1)
    return load_clip(demo_cfg.clip_en)


def _batch(clip_or_wm, images) -> torch.Tensor:
    return torch.stack([clip_or_wm.preprocess(im) for im in images])


def _held_out(n: int, offset: int = 0, **flags) -> list[synth.Scene]:
    rng = np.random.default_rng(HELD_OUT_SEED + 100 + offset)
    return [synth.random_scene(rng, **flags) for _ in range(n)]


def _render(scenes, size=128):
    return [synth.render(s, size) for s in scenes]


# --- configuration ----------------------------------------------------------------------------------


def test_defaults_are_laion5b_models():
    m = ModelsConfig()
    assert (m.clip_en.model, m.clip_en.pretrained) == ("ViT-B-32-quickgelu", "openai")
    assert m.clip_multi.model == "xlm-roberta-base-ViT-B-32"
    assert m.nsfw.method == "mlp" and m.nsfw.weights.endswith("/main/clip_autokeras_binary_nsfw.zip")
    assert m.nsfw.clip.model == "ViT-L-14-quickgelu"
    assert m.watermark.arch == "efficientnet_b3a" and m.watermark.image_size == 256
    assert m.watermark.weights.endswith("watermark_model_v1.pt")
    assert m.aesthetic.clip.model == "ViT-L-14-quickgelu" and "sac%2Blogos%2Bava1-l14-linearMSE.pth" in m.aesthetic.weights


def test_demo_config_points_at_shipped_files(demo_cfg):
    w = demo_weights_dir()
    for name in DEMO_FILES.values():
        assert (w / name).is_file(), name
    total = sum((w / name).stat().st_size for name in DEMO_FILES.values())
    assert total < 20e6, f"shipped demo weights are {total / 1e6:.1f} MB"
    assert demo_cfg.clip_en == demo_cfg.clip_multi == demo_cfg.nsfw.clip == demo_cfg.aesthetic.clip
    # The demo config survives the workflow's validation (what the demo workflow does with it).
    wf = workflow_from_dict({"models": demo_cfg.model_dump()})
    assert wf.models == demo_cfg


def test_models_section_rejects_typos():
    with pytest.raises(ConfigError, match="models.nsfw.methd: unknown key"):
        workflow_from_dict({"models": {"nsfw": {"methd": "zeroshot"}}})
    with pytest.raises(ConfigError, match="models.nsfw.method"):
        workflow_from_dict({"models": {"nsfw": {"method": "magic"}}})


# --- CLIP -------------------------------------------------------------------------------------------


def test_embeddings_are_normalised_float32(clip):
    scenes = _held_out(6)
    img = clip.encode_images(_batch(clip, _render(scenes)))
    txt = clip.encode_texts([s.caption("en") for s in scenes])
    assert img.dtype == txt.dtype == torch.float32
    assert img.shape == txt.shape == (6, clip.embed_dim) and clip.embed_dim == 64
    assert torch.allclose(img.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert clip.encode_texts([]).shape == (0, 64)


def test_similarity_is_the_hand_computed_cosine(clip):
    scenes = _held_out(5)
    pixels = _batch(clip, _render(scenes))
    texts = [s.caption("de") for s in scenes]
    sim = clip.similarity(clip.encode_images(pixels), clip.encode_texts(texts))
    with torch.no_grad():  # straight from the open_clip model, normalised by hand
        i = clip.model.encode_image(pixels).numpy().astype(np.float64)
        t = clip.model.encode_text(clip.tokenizer(texts)).numpy().astype(np.float64)
    expected = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(i, t)]
    assert sim.dtype == np.float32 and sim.shape == (5,)
    np.testing.assert_allclose(sim, expected, atol=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        clip.similarity(np.zeros((2, 64)), np.zeros((3, 64)))


@pytest.mark.parametrize("lang", synth.LANGS)
def test_matching_caption_beats_a_mismatching_one(clip, lang):
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    scenes = [synth.random_scene(rng, watermark=0.15, degradation=0.15, unsafe=1 / 7) for _ in range(150)]
    img = clip.encode_images(_batch(clip, _render(scenes)))
    pos = clip.similarity(img, clip.encode_texts([s.caption(lang) for s in scenes]))
    neg = clip.similarity(img, clip.encode_texts([synth.mismatched_caption(rng, s, lang) for s in scenes]))
    assert (pos > neg).mean() >= 0.9


def test_demo_clip_is_also_multilingual_across_languages(clip):
    """A German caption's embedding is closer to its English twin than to another English caption."""
    rng = np.random.default_rng(HELD_OUT_SEED + 2)
    scenes = [synth.random_scene(rng) for _ in range(60)]
    de = clip.encode_texts([s.caption("de") for s in scenes])
    en = clip.encode_texts([s.caption("en") for s in scenes])
    other = clip.encode_texts([synth.mismatched_caption(rng, s, "en") for s in scenes])
    assert (clip.similarity(de, en) > clip.similarity(de, other)).mean() >= 0.9


def test_cached_clip_loads_once(demo_cfg):
    a = cached_clip(demo_cfg.clip_en)
    assert cached_clip(demo_cfg.clip_multi) is a


def test_clip_config_errors(tmp_path):
    bad = tmp_path / "hub.json"
    bad.write_text('{"model_cfg": {}}')
    with pytest.raises(ValueError, match="local-dir:"):
        load_clip(ClipModelConfig(model=str(bad), pretrained=None))
    with pytest.raises(FileNotFoundError):
        load_clip(
            ClipModelConfig(
                model=str(demo_weights_dir() / DEMO_FILES["clip_config"]),
                pretrained=str(tmp_path / "missing.safetensors"),
            )
        )


# --- punsafe ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsafe_set(clip):
    scenes = _held_out(160, 1, unsafe=0.5, watermark=0.15, degradation=0.15)
    return clip.encode_images(_batch(clip, _render(scenes))), np.array([s.unsafe for s in scenes])


def test_nsfw_mlp_head_separates_the_unsafe_concept(demo_cfg, clip, unsafe_set):
    emb, labels = unsafe_set
    scorer = load_nsfw(demo_cfg.nsfw, clip)
    p = scorer.score(emb)
    assert p.dtype == np.float32 and p.shape == labels.shape and ((0 <= p) & (p <= 1)).all()
    assert auc(p, labels) >= 0.9
    assert isinstance(scorer.head, LaionNsfwHead)  # LAION's L/14 layout, at demo size
    assert scorer.score(np.zeros((0, 64), dtype=np.float32)).shape == (0,)


def test_nsfw_zeroshot_method_needs_no_weights(demo_cfg, clip, unsafe_set):
    emb, labels = unsafe_set
    cfg = demo_cfg.nsfw.model_copy(update={"method": "zeroshot", "weights": None})
    scorer = load_nsfw(cfg, clip)
    p = scorer.score(emb)
    assert ((0 <= p) & (p <= 1)).all()
    assert auc(p, labels) >= 0.9
    tags = scorer.tags(emb)
    assert set(tags) <= {"NSFW", "UNSURE", "UNLIKELY"}
    nsfw = np.array([t == "NSFW" for t in tags])
    assert nsfw[labels].mean() > nsfw[~labels].mean()


def test_nsfw_head_for_another_clip_is_refused(demo_cfg, clip, tmp_path):
    head = LaionNsfwHead([768, 64, 512, 256, 1])  # LAION's ViT-L/14 head
    torch.save(head.state_dict(), tmp_path / "l14.pth")
    with pytest.raises(ValueError, match="models.nsfw.clip"):
        load_nsfw(NsfwModelConfig(clip=demo_cfg.nsfw.clip, weights=str(tmp_path / "l14.pth")), clip)


@pytest.mark.parametrize(
    "make, dim",
    [
        (lambda: LaionNsfwHead([512, 32, 32, 1]), 512),  # clip_ViT-B-32_openai_binary_nsfw_head.pth
        (lambda: LaionNsfwHead([768, 64, 512, 256, 1]), 768),  # clip_ViT-L-14_openai_binary_nsfw_head.pth
        (lambda: H14NsfwDetector(1024), 1024),  # h14_nsfw.pth
    ],
)
def test_laion_nsfw_layouts_are_recognised_from_their_files(make, dim, tmp_path):
    torch.manual_seed(0)
    src = make().eval()
    torch.save(src.state_dict(), tmp_path / "head.pth")
    head = head_from_state_dict(load_state_dict(str(tmp_path / "head.pth")))
    assert type(head) is type(src)
    x = torch.nn.functional.normalize(torch.randn(4, dim), dim=-1)
    with torch.no_grad():
        out = head(x)
        assert torch.allclose(out, src(x))
    assert out.shape == (4,) and ((0 <= out) & (out <= 1)).all()


def test_nsfw_keys_match_laion_files():
    assert set(LaionNsfwHead([512, 32, 32, 1]).state_dict()) == {
        "norm.mean", "norm.variance",
        "linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias", "linear_3.weight", "linear_3.bias",
    }
    assert {k for k in H14NsfwDetector().state_dict() if k.endswith("weight")} == {
        f"layers.{i}.weight" for i in (0, 3, 6, 9, 12, 15, 16)
    }
    with pytest.raises(ValueError, match="unknown weight layout"):
        head_from_state_dict({"fc.weight": torch.zeros(1, 2)})


# --- pwatermark -------------------------------------------------------------------------------------


def test_watermark_model_separates_text_overlays(demo_cfg):
    wm = load_watermark(demo_cfg.watermark)
    scenes = _held_out(120, 2, watermark=0.5, degradation=0.15, unsafe=1 / 7)
    rng = np.random.default_rng(HELD_OUT_SEED + 3)
    images = [synth.render(s, int(rng.choice([96, 128, 256]))) for s in scenes]
    x = _batch(wm, images)
    assert x.shape[1:] == (3, 256, 256)  # LAION's 256x256 input
    p = wm.score(x)
    assert p.dtype == np.float32 and ((0 <= p) & (p <= 1)).all()
    assert auc(p, [s.watermarked for s in scenes]) >= 0.9
    assert wm.score(torch.zeros(0, 3, 256, 256)).shape == (0,)


def test_laion_watermark_architecture_and_keys():
    model = build_watermark_model("efficientnet_b3a")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("classifier.")}
    assert shapes == {
        "classifier.0.weight": (625, 1536), "classifier.0.bias": (625,),
        "classifier.3.weight": (256, 625), "classifier.3.bias": (256,),
        "classifier.5.weight": (2, 256), "classifier.5.bias": (2,),
    }


# --- aesthetic --------------------------------------------------------------------------------------


def test_aesthetic_ranks_clean_above_degraded(demo_cfg, clip):
    from dataclasses import replace

    scorer = load_aesthetic(demo_cfg.aesthetic, clip)
    clean = _held_out(90, 3, unsafe=1 / 7)
    rng = np.random.default_rng(HELD_OUT_SEED + 4)
    bad = [
        replace(s, degradation=synth.DEGRADATIONS[i % 3], severity=float(rng.uniform(0.4, 1)))
        for i, s in enumerate(clean)
    ]
    a = scorer.score(clip.encode_images(_batch(clip, _render(clean))))
    b = scorer.score(clip.encode_images(_batch(clip, _render(bad))))
    assert a.dtype == np.float32
    assert (a > b).mean() >= 0.9  # the same scene, clean vs degraded
    assert 5.0 < np.median(a) < 9.0 and 1.0 < np.median(b) < 5.5  # on LAION's ~1..10 scale


def test_aesthetic_mlp_keys_match_laion_file():
    assert {k for k in AestheticMLP(768).state_dict() if k.endswith("weight")} == {
        f"layers.{i}.weight" for i in (0, 2, 4, 6, 7)
    }


# --- weight files -----------------------------------------------------------------------------------


def test_url_weights_are_fetched_once_into_the_cache(tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("LAION_PIPE_CACHE", str(tmp_path / "cache"))
    src = demo_weights_dir() / DEMO_FILES["aesthetic"]
    url = "memory://weights/demo-aesthetic.safetensors"
    with fsspec.open(url, "wb") as f:
        f.write(src.read_bytes())
    local = local_weights(url)
    assert local.startswith(str(tmp_path / "cache")) and local.endswith("demo-aesthetic.safetensors")
    assert open(local, "rb").read() == src.read_bytes()
    fsspec.filesystem("memory").rm("/weights/demo-aesthetic.safetensors")
    assert local_weights(url) == local  # served from the cache now
    assert set(load_state_dict(url)) == set(AestheticMLP(64).state_dict())


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        local_weights(str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a tensor state dict"):
        load_state_dict(str(tmp_path / "junk.pth"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_half_precision_matches_cpu(demo_cfg, clip):
    gpu = load_clip(demo_cfg.clip_en, device="cuda")
    assert gpu.precision == "fp16"
    scenes = _held_out(8)
    pixels = _batch(clip, _render(scenes))
    texts = [s.caption("en") for s in scenes]
    cpu_sim = clip.similarity(clip.encode_images(pixels), clip.encode_texts(texts))
    gpu_sim = gpu.similarity(gpu.encode_images(pixels), gpu.encode_texts(texts))
    np.testing.assert_allclose(gpu_sim, cpu_sim, atol=1e-2)


def test_preprocess_accepts_any_image_mode(demo_cfg, clip):
    from PIL import Image

    wm = load_watermark(demo_cfg.watermark)
    for mode in ("L", "RGBA", "P", "CMYK"):
        img = Image.new(mode, (50, 30))
        assert clip.preprocess(img).shape == (3, 64, 64)
        assert wm.preprocess(img).shape == (3, 256, 256)
