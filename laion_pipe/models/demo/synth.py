"""Synthetic image-caption pairs: the one world the demo models are trained on and tested against.

Why a generator and not a folder of images: the demo models, the demo world (`laion-pipe demo`)
and the score/select tests all need *the same* concepts, with known ground truth (which caption
matches, which image carries a watermark, which one shows the stand-in unsafe concept, which one
was degraded), in any quantity and without shipping data. Everything here is a pure function of a
`numpy.random.Generator`, so a seed reproduces a set exactly.

A scene is "a {colour} {shape} on a {colour} background", optionally with

- an overlaid text watermark (semi-transparent stock-photo style text: what LAION's watermark
  classifier looks for);
- the stand-in *unsafe* concept: the shape is a **skull** (no unsafe data is generated here; the
  demo NSFW head learns "skull" the way the real one learns NSFW content, see demo/README.md);
- a quality degradation (Gaussian blur, Gaussian noise or heavy JPEG compression) of some
  severity: the proxy the demo aesthetic head learns instead of human ratings.

Captions exist in English, German, French and Spanish (with the right grammatical gender), so one
tiny CLIP can serve as the demo's EN and multilingual model at once.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LANGS: tuple[str, ...] = ("en", "de", "fr", "es")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 65, 215),
    "yellow": (240, 215, 35),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "brown": (125, 75, 30),
}

SAFE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "ring")
UNSAFE_SHAPE = "skull"
"""The stand-in unsafe concept. A skull is drawable, unmistakable at 64 px, and has a word in
every demo language, so both the MLP head and the zero-shot prompt method can learn/see it."""
SHAPES: tuple[str, ...] = SAFE_SHAPES + (UNSAFE_SHAPE,)

DEGRADATIONS: tuple[str, ...] = ("blur", "noise", "jpeg")

WATERMARK_TEXTS: tuple[str, ...] = (
    "© stockpix",
    "SAMPLE",
    "preview",
    "shutterimg",
    "© foto-archiv",
    "dreamstock",
    "COPYRIGHT",
    "www.pixbank.com",
    "© imagesdepot",
    "alamo photo",
)

CLEAN_AESTHETIC = 7.0
"""Target aesthetic score of an undegraded image; a degraded one gets
CLEAN_AESTHETIC - 5 * severity (severity in [0.4, 1]), i.e. about 2..5."""

# --- captions: per-language vocabulary with grammatical gender -------------------------------------

_NOUNS: dict[str, dict[str, tuple[str, str]]] = {
    # lang -> shape -> (noun, gender m/f/n)
    "de": {
        "circle": ("Kreis", "m"),
        "square": ("Quadrat", "n"),
        "triangle": ("Dreieck", "n"),
        "star": ("Stern", "m"),
        "diamond": ("Raute", "f"),
        "ring": ("Ring", "m"),
        "skull": ("Schädel", "m"),
    },
    "fr": {
        "circle": ("cercle", "m"),
        "square": ("carré", "m"),
        "triangle": ("triangle", "m"),
        "star": ("étoile", "f"),
        "diamond": ("losange", "m"),
        "ring": ("anneau", "m"),
        "skull": ("crâne", "m"),
    },
    "es": {
        "circle": ("círculo", "m"),
        "square": ("cuadrado", "m"),
        "triangle": ("triángulo", "m"),
        "star": ("estrella", "f"),
        "diamond": ("rombo", "m"),
        "ring": ("anillo", "m"),
        "skull": ("calavera", "f"),
    },
}
_DE_STEMS = {
    "red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb",
    "black": "schwarz", "white": "weiß", "grey": "grau", "brown": "braun",
}
_FR_ADJ = {  # (masculine, feminine)
    "red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
    "yellow": ("jaune", "jaune"), "black": ("noir", "noire"), "white": ("blanc", "blanche"),
    "grey": ("gris", "grise"), "brown": ("marron", "marron"),
}
_ES_ADJ = {
    "red": ("rojo", "roja"), "green": ("verde", "verde"), "blue": ("azul", "azul"),
    "yellow": ("amarillo", "amarilla"), "black": ("negro", "negra"), "white": ("blanco", "blanca"),
    "grey": ("gris", "gris"), "brown": ("marrón", "marrón"),
}


QUALITY_WORDS: dict[str, dict[str, str]] = {
    # lang -> degradation -> prefix; how alt texts sometimes say that a picture is bad
    "en": {"blur": "blurry photo:", "noise": "noisy photo:", "jpeg": "pixelated photo:"},
    "de": {"blur": "unscharfes Foto:", "noise": "verrauschtes Foto:", "jpeg": "verpixeltes Foto:"},
    "fr": {"blur": "photo floue :", "noise": "photo bruitée :", "jpeg": "photo pixelisée :"},
    "es": {"blur": "foto borrosa:", "noise": "foto con ruido:", "jpeg": "foto pixelada:"},
}


def caption_for(shape: str, colour: str, background: str, lang: str = "en") -> str:
    """The caption of a scene in one language, e.g. ("star", "red", "blue", "fr") ->
    "une étoile rouge sur fond bleu"."""
    if lang == "en":
        return f"a {colour} {shape} on a {background} background"
    if lang == "de":
        noun, g = _NOUNS["de"][shape]
        art, end = {"m": ("ein", "er"), "n": ("ein", "es"), "f": ("eine", "e")}[g]
        return f"{art} {_DE_STEMS[colour]}{end} {noun} auf {_DE_STEMS[background]}em Hintergrund"
    if lang == "fr":
        noun, g = _NOUNS["fr"][shape]
        adj = _FR_ADJ[colour][g == "f"]
        return f"{'une' if g == 'f' else 'un'} {noun} {adj} sur fond {_FR_ADJ[background][0]}"
    if lang == "es":
        noun, g = _NOUNS["es"][shape]
        adj = _ES_ADJ[colour][g == "f"]
        return f"{'una' if g == 'f' else 'un'} {noun} {adj} sobre fondo {_ES_ADJ[background][0]}"
    raise ValueError(f"unknown caption language {lang!r}; known: {LANGS}")


# --- scenes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """Everything that determines one image: ground truth for the tests, and `render` input."""

    shape: str
    colour: str
    background: str
    cx: float  # centre, as fractions of the canvas
    cy: float
    scale: float  # shape radius as a fraction of the canvas side
    angle: float  # degrees
    jitter: tuple[int, int, int, int, int, int]  # small per-image colour noise (shape rgb, bg rgb)
    watermark: str | None = None  # the overlaid text, None when clean
    wm_layout: tuple[float, ...] = ()  # x, y, angle, size, opacity, tone, tiled
    degradation: str | None = None  # one of DEGRADATIONS, None when clean
    severity: float = 0.0  # 0 (clean) .. 1 (worst)
    seed: int = 0  # for pixel noise, so rendering stays a pure function of the scene

    @property
    def unsafe(self) -> bool:
        return self.shape == UNSAFE_SHAPE

    @property
    def watermarked(self) -> bool:
        return self.watermark is not None

    @property
    def aesthetic(self) -> float:
        """The quality-proxy target the demo aesthetic head is trained on."""
        return CLEAN_AESTHETIC - 5.0 * self.severity if self.degradation else CLEAN_AESTHETIC

    def caption(self, lang: str = "en") -> str:
        return caption_for(self.shape, self.colour, self.background, lang)

    def quality_caption(self, lang: str = "en") -> str:
        """The caption with the degradation named ("blurry photo: a red circle on ..."), as some
        alt texts do; the plain caption when the image is clean. Training the demo CLIP on these
        now and then is what makes its image embedding carry quality, which the aesthetic head
        reads (a real CLIP learned that from the web)."""
        if not self.degradation:
            return self.caption(lang)
        return f"{QUALITY_WORDS[lang][self.degradation]} {self.caption(lang)}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(unsafe=self.unsafe, watermarked=self.watermarked, aesthetic=self.aesthetic)
        return d


def _pick(rng: np.random.Generator, items) -> str:
    return items[int(rng.integers(len(items)))]


def random_scene(
    rng: np.random.Generator,
    *,
    unsafe: bool | float = False,
    watermark: bool | float = False,
    degradation: bool | float | str = False,
) -> Scene:
    """Draw a scene. Each of `unsafe`, `watermark`, `degradation` is True/False, or a probability;
    `degradation` may also name the kind (`"blur"`, `"noise"`, `"jpeg"`)."""

    def coin(p: bool | float) -> bool:
        return bool(p) if isinstance(p, bool) else bool(rng.random() < p)

    shape = UNSAFE_SHAPE if coin(unsafe) else _pick(rng, SAFE_SHAPES)
    names = list(COLOURS)
    colour = _pick(rng, names)
    background = _pick(rng, [c for c in names if c != colour])
    scale = float(rng.uniform(0.28, 0.42))
    cx, cy = (float(rng.uniform(scale + 0.04, 0.96 - scale)) for _ in range(2))
    angle = float(rng.uniform(-15, 15))
    jitter = tuple(int(v) for v in rng.integers(-14, 15, size=6))
    wm_text, wm_layout = None, ()
    if coin(watermark):
        wm_text = _pick(rng, WATERMARK_TEXTS)
        wm_layout = (
            float(rng.uniform(0.05, 0.6)),  # x
            float(rng.uniform(0.05, 0.8)),  # y
            float(rng.choice([0.0, 0.0, 30.0, -30.0])),  # angle
            float(rng.uniform(0.11, 0.2)),  # font size, fraction of side
            float(rng.uniform(0.55, 0.9)),  # opacity
            float(rng.integers(0, 3)),  # tone: 0 white, 1 black, 2 grey
            float(rng.random() < 0.35),  # tiled
        )
    kind, severity = None, 0.0
    if isinstance(degradation, str):
        if degradation not in DEGRADATIONS:
            raise ValueError(f"unknown degradation {degradation!r}; known: {DEGRADATIONS}")
        kind = degradation
    elif coin(degradation):
        kind = _pick(rng, DEGRADATIONS)
    if kind:
        severity = float(rng.uniform(0.4, 1.0))
    return Scene(
        shape, colour, background, cx, cy, scale, angle, jitter,
        wm_text, wm_layout, kind, severity, int(rng.integers(2**31)),
    )


# --- rendering --------------------------------------------------------------------------------------


def _rgb(name: str, jit: tuple[int, ...]) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[name], jit))  # type: ignore[return-value]


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return points @ rot.T


def _polygon(kind: str) -> np.ndarray:
    """Unit-radius outlines, centred on 0."""
    if kind == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if kind == "triangle":
        t = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(t), np.sin(t) + 0.15], axis=1)
    if kind == "diamond":
        return np.array([[0, -1.0], [0.62, 0], [0, 1.0], [-0.62, 0]])
    if kind == "star":
        t = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    raise ValueError(kind)


def _draw_shape(draw: ImageDraw.ImageDraw, scene: Scene, side: int, fill, bg) -> None:
    cx, cy, r = scene.cx * side, scene.cy * side, scene.scale * side

    def box(x0, y0, x1, y1):
        return [cx + x0 * r, cy + y0 * r, cx + x1 * r, cy + y1 * r]

    if scene.shape == "circle":
        draw.ellipse(box(-1, -1, 1, 1), fill=fill)
    elif scene.shape == "ring":
        draw.ellipse(box(-1, -1, 1, 1), fill=fill)
        draw.ellipse(box(-0.6, -0.6, 0.6, 0.6), fill=bg)
    elif scene.shape == "skull":
        draw.ellipse(box(-0.85, -1.0, 0.85, 0.55), fill=fill)  # cranium
        draw.rectangle(box(-0.5, 0.3, 0.5, 0.95), fill=fill)  # jaw
        draw.ellipse(box(-0.6, -0.4, -0.12, 0.1), fill=bg)  # eyes
        draw.ellipse(box(0.12, -0.4, 0.6, 0.1), fill=bg)
        draw.polygon([(cx, cy + 0.15 * r), (cx - 0.13 * r, cy + 0.38 * r), (cx + 0.13 * r, cy + 0.38 * r)], fill=bg)
        for x in (-0.25, 0.0, 0.25):  # teeth gaps
            draw.line([cx + x * r, cy + 0.6 * r, cx + x * r, cy + 0.95 * r], fill=bg, width=max(1, int(r * 0.08)))
    else:
        pts = _rotate(_polygon(scene.shape), scene.angle) * r + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts], fill=fill)


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, px))


def _overlay_watermark(img: Image.Image, scene: Scene) -> Image.Image:
    side = img.width
    x, y, angle, size, opacity, tone, tiled = scene.wm_layout
    rgb = [(255, 255, 255), (0, 0, 0), (160, 160, 160)][int(tone)]
    font = _font(int(size * side))
    l, t, r, b = font.getbbox(scene.watermark)
    stamp = Image.new("RGBA", (r - l + 4, b - t + 4), (0, 0, 0, 0))
    ImageDraw.Draw(stamp).text((2 - l, 2 - t), scene.watermark, font=font, fill=rgb + (int(255 * opacity),))
    if angle:
        stamp = stamp.rotate(angle, expand=True, resample=Image.BICUBIC)
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    spots = [(x, y)]
    if tiled:
        spots = [(fx, fy) for fy in (0.1, 0.45, 0.8) for fx in ((x * 0.3), (x * 0.3 + 0.5))]
    for fx, fy in spots:
        layer.alpha_composite(stamp, (int(fx * side), int(fy * side)) if stamp.width < side else (0, int(fy * side)))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


DEFECT_GRID = 64
"""Noise grain and JPEG pixelation are drawn on a grid of at most DEFECT_GRID cells across and
scaled to the image, so a degradation looks the same at every resolution and survives a model's
downscaling (per-pixel noise or 8-px JPEG blocks on a 256 px image vanish at the demo CLIP's 64 px)."""


def _degrade(img: Image.Image, scene: Scene) -> Image.Image:
    """Scale-invariant degradations: all sizes are fractions of the image side."""
    s, side = scene.severity, img.width
    if scene.degradation == "blur":
        return img.filter(ImageFilter.GaussianBlur(radius=side * (0.02 + 0.04 * s)))
    if scene.degradation == "noise":
        grain = np.random.default_rng(scene.seed).normal(0, 25 + 45 * s, size=(DEFECT_GRID, DEFECT_GRID, 3))
        # Resize each channel as float ("F" mode) so the noise keeps its sign and amplitude.
        planes = [Image.fromarray(grain[..., c].astype(np.float32), "F") for c in range(3)]
        noise = np.stack([np.asarray(p.resize((side, side), Image.NEAREST)) for p in planes], axis=-1)
        return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    if scene.degradation == "jpeg":
        # A low-resolution, heavily compressed copy blown back up: blocky and pixelated.
        # (4:4:4 chroma, so the colours the caption names survive.)
        small = min(side, round(0.5 * DEFECT_GRID / (1 + s)))  # 16..21 cells across
        buf = io.BytesIO()
        img.resize((small, small), Image.BILINEAR).save(buf, "JPEG", quality=round(35 - 20 * s), subsampling=0)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize((side, side), Image.NEAREST)
    return img


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Draw a scene as an RGB image of `size` x `size` pixels (shape, then watermark, then the
    degradation, the order a real photo goes through them)."""
    bg = _rgb(scene.background, scene.jitter[3:])
    fill = _rgb(scene.colour, scene.jitter[:3])
    # Draw at 2x and downsample: anti-aliased edges, like a real photo rather than pixel art.
    big = Image.new("RGB", (2 * size, 2 * size), bg)
    _draw_shape(ImageDraw.Draw(big), scene, 2 * size, fill, bg)
    img = big.resize((size, size), Image.BILINEAR)
    if scene.watermark:
        img = _overlay_watermark(img, scene)
    return _degrade(img, scene)


# --- the public sampling API ------------------------------------------------------------------------


class Sample(NamedTuple):
    image: Image.Image
    caption: str
    attrs: Scene


def sample(
    rng: np.random.Generator,
    lang: str = "en",
    *,
    unsafe: bool | float = False,
    watermark: bool | float = False,
    degradation: bool | float | str = False,
    size: int = 128,
) -> Sample:
    """One (image, matching caption, scene) triple; see `random_scene` for the flags."""
    scene = random_scene(rng, unsafe=unsafe, watermark=watermark, degradation=degradation)
    return Sample(render(scene, size), scene.caption(lang), scene)


def mismatched_caption(rng: np.random.Generator, scene: Scene, lang: str = "en", *, hard: bool = False) -> str:
    """A caption that does not describe `scene`. Random other attributes by default; with
    `hard=True` exactly one attribute changes (shape, colour or background), or colour and
    background swap places: the negatives a bag-of-words model gets wrong."""
    names = list(COLOURS)
    if not hard:
        while True:
            shape = _pick(rng, SHAPES)
            colour = _pick(rng, names)
            bg = _pick(rng, [c for c in names if c != colour])
            if (shape, colour, bg) != (scene.shape, scene.colour, scene.background):
                return caption_for(shape, colour, bg, lang)
    which = int(rng.integers(4))
    shape, colour, bg = scene.shape, scene.colour, scene.background
    if which == 0:
        shape = _pick(rng, [s for s in SHAPES if s != shape])
    elif which == 1:
        colour = _pick(rng, [c for c in names if c not in (colour, bg)])
    elif which == 2:
        bg = _pick(rng, [c for c in names if c not in (colour, bg)])
    else:
        colour, bg = bg, colour
    return caption_for(shape, colour, bg, lang)


def all_captions(lang: str = "en", shapes: tuple[str, ...] = SHAPES) -> list[str]:
    """Every caption the generator can produce in one language (for zero-shot prompt lists)."""
    return [
        caption_for(s, c, b, lang)
        for s in shapes
        for c in COLOURS
        for b in COLOURS
        if c != b
    ]

