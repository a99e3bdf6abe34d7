"""The real models, as their publishers ship and run them (issue 18).

Nothing here can download the published weights. So each test writes a checkpoint with random
weights in exactly the publisher's layout (keys, nesting, file format), loads it through the
workflow configuration, and compares what the project computes with a reference written in this
file from the publisher's own forward code. LAION's NSFW zip is the exception: its real B/32 file
(MIT) is tiny and ships in tests/data with what TensorFlow computed from it.
"""
from __future__ import annotations

import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from laion_pipe.config import load_workflow, workflow_from_dict
from laion_pipe.config.models import AestheticModelConfig, ClipModelConfig, ModelsConfig, NsfwModelConfig, WatermarkModelConfig
from reference_models import ImprovedMLP

DATA = Path(__file__).parent / "data" / "laion_nsfw_b32"
REPO = Path(__file__).parent.parent


def _stub_clip(dim: int):
    """What the heads ask of the CLIP whose embeddings they read."""
    return types.SimpleNamespace(embed_dim=dim, device="cpu", name=f"stub-{dim}")


def _unit(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


# --- NSFW: LAION's autokeras zip ------------------------------------------------------------------


def test_keras_zip_computes_what_tensorflow_computes():
    from laion_pipe.models.nsfw import load_nsfw

    zip_path = DATA / "clip_autokeras_nsfw_b32.zip"
    cfg = workflow_from_dict({"models": {"nsfw": {"weights": str(zip_path)}}}).models.nsfw
    scorer = load_nsfw(cfg, _stub_clip(512))
    x, keras = np.load(DATA / "inputs.npy"), np.load(DATA / "keras_outputs.npy")
    np.testing.assert_allclose(scorer.score(x), keras, atol=2e-6)
    assert keras.min() < 0.1 and keras.max() > 0.9  # the inputs exercise the whole range


def test_keras_zip_weights_are_laions_own_port():
    """LAION converted the same zip with TensorFlow + autokeras: the tensors must be identical."""
    from laion_pipe.models.keras_nsfw import read_keras_nsfw_zip

    spec = read_keras_nsfw_zip((DATA / "clip_autokeras_nsfw_b32.zip").read_bytes())
    port = torch.load(DATA / "clip_ViT-B-32_openai_binary_nsfw_head.pth", map_location="cpu", weights_only=True)
    ours = spec.state_dict()
    assert set(ours) == set(port)
    for k in port:
        assert torch.equal(ours[k], port[k]), k
    assert spec.activations == ["relu", "relu", "sigmoid"]
    assert sorted(spec.lookups) == [92, 133, 312]


def test_keras_categorical_columns_are_looked_up_as_keras_does():
    """autokeras' MultiCategoryEncoding, written here from its published code: StringLookup of
    tf.strings.as_string (printf %f) with one OOV index 0, then Normalization
    (x - mean) / max(sqrt(var), 1e-7), then the dense stack of the Keras config."""
    from laion_pipe.models.keras_nsfw import read_keras_nsfw_zip

    spec = read_keras_nsfw_zip((DATA / "clip_autokeras_nsfw_b32.zip").read_bytes())
    x = np.load(DATA / "inputs.npy").astype(np.float64)
    enc = x.copy()
    for col, vocab in spec.lookups.items():
        index = {tok: i + 1 for i, tok in enumerate(vocab)}
        enc[:, col] = [index.get("%f" % v, 0) for v in x[:, col]]
    h = (enc.astype(np.float32) - spec.mean) / np.maximum(np.sqrt(spec.variance), 1e-7)
    for k, b, act in zip(spec.kernels, spec.biases, spec.activations):
        h = h @ k + b
        h = np.maximum(h, 0) if act == "relu" else 1 / (1 + np.exp(-h)) if act == "sigmoid" else h
    np.testing.assert_allclose(h[:, 0], np.load(DATA / "keras_outputs.npy"), atol=2e-6)
    assert (enc[:8, [92, 133, 312]] > 0).all() and (enc[8:, [92, 133, 312]] == 0).all()


def test_keras_zip_converts_to_a_safetensors_file_with_the_documented_command(tmp_path):
    from laion_pipe.models.nsfw import KerasNsfwHead, head_from_file

    out = tmp_path / "b32.safetensors"
    r = subprocess.run([sys.executable, "-m", "laion_pipe.models.keras_nsfw", str(DATA / "clip_autokeras_nsfw_b32.zip"), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "[512, 32, 32, 1]" in r.stdout and "[92, 133, 312]" in r.stdout
    head = head_from_file(str(out))
    assert isinstance(head, KerasNsfwHead)
    with torch.no_grad():
        got = head(torch.from_numpy(np.load(DATA / "inputs.npy"))).numpy()
    np.testing.assert_allclose(got, np.load(DATA / "keras_outputs.npy"), atol=2e-6)


def test_keras_errors_name_what_was_expected(tmp_path):
    import zipfile

    from laion_pipe.models.keras_nsfw import KerasFormatError, read_keras_nsfw_zip
    from laion_pipe.models.nsfw import head_from_state_dict

    with pytest.raises(KerasFormatError, match="not a zip"):
        read_keras_nsfw_zip(b"no zip")
    buf = tmp_path / "half.zip"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/saved_model.pb", b"")
    with pytest.raises(KerasFormatError, match="missing keras_metadata.pb"):
        read_keras_nsfw_zip(buf.read_bytes())
    with pytest.raises(ValueError, match="autokeras zip .* PyTorch port .* H14"):
        head_from_state_dict({"fc.weight": torch.zeros(1, 2)})


def test_default_nsfw_is_laions_published_zip_pinned():
    m = ModelsConfig()
    assert m.nsfw.weights == ("https://raw.githubusercontent.com/LAION-AI/CLIP-based-NSFW-Detector/main/"
                              "clip_autokeras_binary_nsfw.zip")
    assert m.nsfw.sha256 == "905520bb0336accc73ee282c605d926aef90cf14248889d44b9cee50eef71f8a"
    # Naming other weights drops the default's pin rather than refusing them.
    assert NsfwModelConfig(weights=str(DATA / "clip_autokeras_nsfw_b32.zip")).sha256 is None


# --- aesthetic: LAION's three predictors --------------------------------------------------------------


class ReluMLP(nn.Module):
    """The same repository's avaclipmlp_inf_wds-relu.py MLP (ava+logos-l14-reluMSE.pth)."""

    def __init__(self, input_size):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.ReLU(), nn.Dropout(0.2), nn.Linear(1024, 128), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.layers(x)


def _normalized(a: np.ndarray) -> np.ndarray:
    """The predictors' own `normalized()` (numpy L2 norm, zero norms left alone)."""
    l2 = np.atleast_1d(np.linalg.norm(a, 2, -1))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, -1)


@pytest.mark.parametrize("publisher", ["improved", "relu", "linear-l14", "linear-b32"])
def test_aesthetic_predictors_load_and_match_their_publishers(publisher, tmp_path):
    from laion_pipe.models.aesthetic import load_aesthetic

    torch.manual_seed(0)
    dim = 512 if publisher == "linear-b32" else 768
    ref = {"improved": lambda: ImprovedMLP(dim), "relu": lambda: ReluMLP(dim)}.get(publisher, lambda: nn.Linear(dim, 1))()
    ref.eval()
    path = tmp_path / f"{publisher}.pth"
    torch.save(ref.state_dict(), path)  # what the publishers saved: the state dict, nothing around it
    cfg = workflow_from_dict({"models": {"aesthetic": {"weights": str(path)}}}).models.aesthetic
    scorer = load_aesthetic(cfg, _stub_clip(dim))
    emb = _unit(6, dim, seed=1).numpy() * 3.0  # not unit length: both sides normalise
    with torch.no_grad():
        expected = ref(torch.from_numpy(_normalized(emb)).float()).numpy()[:, 0]
    np.testing.assert_allclose(scorer.score(emb), expected, rtol=1e-5, atol=1e-6)


def test_aesthetic_keys_of_laions_files():
    """The key sets of LAION's released files (read from the files themselves, see the report of issue 18)."""
    assert set(ReluMLP(768).state_dict()) == {f"layers.{i}.{p}" for i in (0, 3, 6, 9, 11) for p in ("weight", "bias")}
    assert set(nn.Linear(768, 1).state_dict()) == {"weight", "bias"}


def test_unknown_aesthetic_layout_names_the_expected_ones(tmp_path):
    from laion_pipe.models.aesthetic import load_aesthetic

    path = tmp_path / "other.pth"
    torch.save({"fc1.weight": torch.zeros(4, 768)}, path)
    with pytest.raises(ValueError, match="improved aesthetic predictor .* ReLU variant .* linear predictor"):
        load_aesthetic(AestheticModelConfig(weights=str(path)), _stub_clip(768))


# --- watermark: LAION's efficientnet_b3a -------------------------------------------------------------


def _laion_watermark_model():
    """LAION-5B-WatermarkDetection inference.py's load_model(), without the weights."""
    import timm

    model = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
    model.classifier = nn.Sequential(
        nn.Linear(in_features=1536, out_features=625), nn.ReLU(), nn.Dropout(p=0.3),
        nn.Linear(in_features=625, out_features=256), nn.ReLU(), nn.Linear(in_features=256, out_features=2),
    )
    return model


@pytest.fixture(scope="module")
def watermark_reference():
    torch.manual_seed(3)
    model = _laion_watermark_model().eval()
    with torch.no_grad():  # random BN statistics, so that a wrong load cannot hide behind defaults
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["released", "training-checkpoint"])
def test_watermark_weights_load_and_match_laions_inference(layout, watermark_reference, tmp_path):
    from PIL import Image
    from torchvision import transforms as T

    from laion_pipe.models.watermark import load_watermark

    sd = watermark_reference.state_dict()
    path = tmp_path / "watermark.pt"
    if layout == "released":
        torch.save(sd, path)
    else:  # watermark-detection's train_watermark.py save_model(): weights, optimizer, scheduler states
        opt = torch.optim.SGD(watermark_reference.classifier.parameters(), lr=0.1, momentum=0.9)
        watermark_reference.classifier[0].weight.grad = torch.zeros_like(watermark_reference.classifier[0].weight)
        opt.step()
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.85)
        torch.save({"weights": sd, "opt_state": opt.state_dict(), "scheduler_state": sched.state_dict()}, path)
    cfg = workflow_from_dict({"models": {"watermark": {"weights": str(path)}}}).models.watermark
    scorer = load_watermark(cfg, "cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((300, 200), (128, 400))]
    laion_pre = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    batch = torch.stack([laion_pre(im.convert("RGB")) for im in images])
    with torch.no_grad():
        expected = torch.softmax(watermark_reference(batch), dim=1)[:, 0].numpy()
    ours = torch.stack([scorer.preprocess(im) for im in images])
    assert torch.allclose(ours, batch)
    np.testing.assert_allclose(scorer.score(ours), expected, atol=1e-5)


def test_watermark_file_of_another_layout_is_a_clear_error(tmp_path):
    from laion_pipe.models.watermark import load_watermark

    path = tmp_path / "w.pt"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="training checkpoint with it under 'weights'"):
        load_watermark(WatermarkModelConfig(arch="test_efficientnet", weights=str(path)), "cpu")


# --- CLIP: the activation each model/tag pair was trained with ----------------------------------------


def _shipped_workflows():
    files = sorted((REPO / "workflows").glob("*.yaml")) + [REPO / "laion_pipe" / "demo" / "workflow.yaml"]
    return [(f.name if f.parent.name == "workflows" else "demo/workflow.yaml", load_workflow(f)) for f in files] + [
        ("defaults", load_workflow(None))]


# What the publishers trained with: OpenAI's clip/model.py has QuickGELU in every ResidualAttentionBlock;
# LAION's open_clip runs (laion5b_s13b_b90k ...) used open_clip's default nn.GELU.
TRAINED_WITH_QUICKGELU = {"openai": True, "laion5b_s13b_b90k": False, "laion2b_s34b_b79k": False}


def _activations(module: nn.Module) -> set[str]:
    from open_clip.transformer import QuickGELU

    return {type(m).__name__ for m in module.modules() if isinstance(m, (QuickGELU, nn.GELU))}


def test_every_shipped_clip_is_built_with_its_training_activation():
    from laion_pipe.models.clip import build_clip, clip_source
    from laion_pipe.models.provision import clip_configs

    seen = set()
    for name, wf in _shipped_workflows():
        for role, cfg in clip_configs(wf):
            src = clip_source(cfg)
            if src.tag is None:
                continue  # the demo CLIP: its own config, no published weights
            key = (cfg.model, cfg.pretrained)
            if key in seen:
                continue
            seen.add(key)
            want = {"QuickGELU"} if TRAINED_WITH_QUICKGELU[src.tag] else {"GELU"}
            if src.hf_repos:  # Hugging Face text tower: its own config; the image tower is open_clip's
                import open_clip
                from open_clip.model import _build_vision_tower

                mc = open_clip.get_model_config(src.name)
                with torch.device("meta"):
                    tower = _build_vision_tower(mc["embed_dim"], mc["vision_cfg"], quick_gelu=src.quick_gelu)
                assert _activations(tower) == want, (name, role, key)
            else:
                with torch.device("meta"):
                    model, _, _ = build_clip(src, None, device="meta")
                assert _activations(model) == want, (name, role, key)
    assert ("ViT-L-14-quickgelu", "openai") in seen and ("ViT-B-32-quickgelu", "openai") in seen


def test_openai_tag_gets_quickgelu_whatever_the_name_and_gelu_tags_refuse_quickgelu_names():
    from laion_pipe.models.clip import build_clip, clip_source

    src = clip_source(ClipModelConfig(model="ViT-B-32", pretrained="openai"))
    assert src.quick_gelu and src.sha256 == "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    with torch.device("meta"):
        model, _, _ = build_clip(src, None, device="meta")
    assert _activations(model) == {"QuickGELU"}
    with pytest.raises(ValueError, match="trained with GELU, not QuickGELU; use model: ViT-B-32$"):
        clip_source(ClipModelConfig(model="ViT-B-32-quickgelu", pretrained="laion2b_s34b_b79k"))


def test_a_clip_that_cannot_be_built_right_is_a_usage_error_before_work(tmp_path):
    """The score stage's plan (its fingerprint input) refuses it, and so does `models check`."""
    from laion_pipe.config import ConfigError
    from laion_pipe.models.scorer import model_identity

    bad = ["models.clip_en.model=ViT-B-32-quickgelu", "models.clip_en.pretrained=laion2b_s34b_b79k"]
    with pytest.raises(ConfigError, match="models: CLIP ViT-B-32-quickgelu .* use model: ViT-B-32"):
        model_identity(workflow_from_dict({}, bad), "en")
    r = subprocess.run([sys.executable, "-m", "laion_pipe", "models", "check", "--cache-dir", str(tmp_path),
                        *[a for o in bad for a in ("--set", o)]], capture_output=True, text=True, timeout=180)
    assert r.returncode == 2, r.stderr
    assert "use model: ViT-B-32" in r.stderr.replace("\n", " ")


# OpenAI's CLIP (openai/CLIP clip/model.py), ViT part, as the reference forward.
class _LayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    def __init__(self, d, heads, mask=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads)
        self.ln_1 = _LayerNorm(d)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, d * 4)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(d * 4, d))]))
        self.ln_2 = _LayerNorm(d)
        self.attn_mask = mask

    def forward(self, x):
        mask = self.attn_mask.to(dtype=x.dtype) if self.attn_mask is not None else None
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads, mask=None):
        super().__init__()
        self.resblocks = nn.Sequential(*[_Block(width, heads, mask) for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class _Visual(nn.Module):
    def __init__(self, res, patch, width, layers, heads, out):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        s = width ** -0.5
        self.class_embedding = nn.Parameter(s * torch.randn(width))
        self.positional_embedding = nn.Parameter(s * torch.randn((res // patch) ** 2 + 1, width))
        self.ln_pre = _LayerNorm(width)
        self.transformer = _Transformer(width, layers, heads)
        self.ln_post = _LayerNorm(width)
        self.proj = nn.Parameter(s * torch.randn(width, out))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class OpenAIClip(nn.Module):
    def __init__(self, embed=512, res=224, v_layers=12, v_width=768, patch=32, ctx=77, vocab=49408, width=512, layers=12):
        super().__init__()
        self.visual = _Visual(res, patch, v_width, v_layers, v_width // 64, embed)
        mask = torch.empty(ctx, ctx).fill_(float("-inf")).triu_(1)
        self.transformer = _Transformer(width, layers, width // 64, mask)
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(ctx, width) * 0.01)
        self.ln_final = _LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed) * width ** -0.5)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

    def encode_image(self, image):
        return self.visual(image)

    def encode_text(self, text):
        x = (self.token_embedding(text) + self.positional_embedding).permute(1, 0, 2)
        x = self.ln_final(self.transformer(x).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        return self.encode_image(image), self.encode_text(text)


@pytest.mark.slow
def test_openai_checkpoint_loads_through_the_config_and_computes_openais_forward(tmp_path):
    """A random ViT-B/32 written as OpenAI ships it (a TorchScript archive at the tag's URL, fp16
    weights), put in the model cache, loaded through `models.clip_en` with both open_clip names:
    the embeddings are those of OpenAI's own forward (QuickGELU) and differ from a GELU build."""
    import open_clip
    from PIL import Image
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    from laion_pipe.models.clip import load_clip
    from laion_pipe.models.weights import cache_path

    torch.manual_seed(0)
    ref = OpenAIClip().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():  # the fp16 values OpenAI's file will hold
            if not any(k in name for k in ("ln_", "embedding", "logit_scale")):
                p.copy_(p.half().float())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    openai_pre = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224), ToTensor(),
                          Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    pixels = openai_pre(image.convert("RGB")).unsqueeze(0)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a red circle on a blue background", "a dog"])
    cache = tmp_path / "cache"
    url = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["url"]
    target = cache_path(url, cache)
    target.parent.mkdir(parents=True)
    with torch.no_grad():
        import copy

        archived = copy.deepcopy(ref)  # (a trace shares its module's parameters)
        archived.forward = lambda: archived.logit_scale.exp()  # a cheap trace still keeps every parameter
        traced = torch.jit.trace(archived, (), check_trace=False)
        for name, p in traced.named_parameters():  # OpenAI's convert_weights(): fp16 but for norms and embeddings
            if not any(k in name for k in ("ln_", "embedding", "logit_scale")):
                p.data = p.data.half()
        assert traced.state_dict()["visual.conv1.weight"].dtype == torch.float16
        traced.save(str(target))
        del traced
        want_img, want_txt = ref.encode_image(pixels), ref.encode_text(tokens)
    for name in ("ViT-B-32-quickgelu", "ViT-B-32"):
        wf = workflow_from_dict({"models": {"cache_dir": str(cache), "clip_en": {"model": name, "pretrained": "openai"}}})
        clip = load_clip(wf.models.clip_en, cache=wf.models.cache_dir)
        assert torch.allclose(clip.preprocess(image).unsqueeze(0), pixels, atol=1e-6)
        with torch.no_grad():
            img, txt = clip.model.encode_image(pixels), clip.model.encode_text(tokens)
        assert torch.allclose(img, want_img, atol=2e-4), (name, (img - want_img).abs().max())
        assert torch.allclose(txt, want_txt, atol=2e-4), (name, (txt - want_txt).abs().max())
    from open_clip.transformer import QuickGELU

    for block in clip.model.visual.transformer.resblocks:  # what open_clip >= 2.29 alone builds: GELU
        assert isinstance(block.mlp.gelu, QuickGELU)
        block.mlp.gelu = nn.GELU()
    with torch.no_grad():
        assert (clip.model.encode_image(pixels) - want_img).abs().max() > 1e-2  # so the comparison above can fail
