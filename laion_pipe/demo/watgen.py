"""Write realistic Common Crawl WAT and WARC files for given pages.

Tests, the extract benchmark and the demo world need crawl files whose content is known. This
module writes them the way Common Crawl does, so the readers are tested on the real structure
and not on a simplification of it:

- a WAT is a WARC file of `metadata` records holding JSON, one per record of the WARC it
  describes: for each page one for the `request`, one for the `response` (with
  `HTML-Metadata.Links` / `Head`) and one for the crawler's `metadata` record, after a
  `warcinfo`; compressed files are one gzip member per record;
- `IMG@/src` links carry `alt` / `title` only when the attribute exists, and hold the raw
  attribute text as it appears in the HTML source (entities such as `&amp;` not decoded), as
  ia-web-commons writes them;
- `list_headers=True` writes repeated headers as JSON lists, as Common Crawl does since
  CC-MAIN-2024-51; `shuffle_keys=True` varies key order, which is not stable between crawls.

`write_warc` writes the WARC the WAT describes (request, response with the page's HTML,
metadata), so a WAT and a WARC of the same pages must give the same pairs.

The API is pages in, file out: `write_wat([Page(url, [(src, alt), ...]), ...], "x.wat.gz")`.
`random_pages(n, seed)` makes a varied, reproducible crawl (several languages, relative and
protocol-relative URLs, `<base>`, data:/javascript:/svg/gif sources, duplicates, missing alts).
"""
from __future__ import annotations

import html
import random
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
from isal import isal_zlib

from .. import fsio

CC_LICENSE = "http://creativecommons.org/licenses/by-sa/4.0/"


@dataclass(frozen=True)
class Img:
    """One `<img>`: `alt=None` means no alt attribute at all, `""` an empty one."""

    src: str
    alt: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class Page:
    """A crawled HTML page. `images` may hold `Img` or plain `(src, alt)` tuples; `links` are
    other `<a href>` as `(href, text)`; `base` becomes `<base href>`; `license` a CC link."""

    url: str
    images: Sequence[Img | tuple[str, str | None]] = ()
    base: str | None = None
    license: str | None = None
    title: str = ""
    links: Sequence[tuple[str, str]] = ()
    lang: str | None = None
    charset: str = "utf-8"

    def imgs(self) -> list[Img]:
        return [i if isinstance(i, Img) else Img(i[0], i[1]) for i in self.images]


def _attr(value: str) -> str:
    return html.escape(value, quote=True)


def page_html(page: Page) -> str:
    """The page's HTML source; the WAT `write_wat` writes describes exactly this document."""
    parts = ["<!DOCTYPE html>\n<html" + (f' lang="{_attr(page.lang)}"' if page.lang else "") + ">\n<head>\n"]
    parts.append(f'<meta charset="{page.charset}">\n<title>{html.escape(page.title)}</title>\n')
    parts.append('<link rel="stylesheet" href="/static/site.css">\n')
    if page.base is not None:
        parts.append(f'<base href="{_attr(page.base)}">\n')
    parts.append("</head>\n<body>\n")
    for kind, item in _body_items(page):
        if kind == "a":
            href, text = item
            parts.append(f'<p><a href="{_attr(href)}">{html.escape(text)}</a></p>\n')
        else:
            img: Img = item
            attrs = f'src="{_attr(img.src)}"'
            if img.alt is not None:
                attrs += f' alt="{_attr(img.alt)}"'
            if img.title is not None:
                attrs += f' title="{_attr(img.title)}"'
            parts.append(f"<div><img {attrs}></div>\n")
    if page.license:
        parts.append(f'<footer><a rel="license" href="{_attr(page.license)}">Creative Commons License</a></footer>\n')
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _body_items(page: Page) -> list[tuple[str, object]]:
    """Anchors and images interleaved in a fixed order (links first half, images, rest)."""
    links, imgs = list(page.links), page.imgs()
    half = len(links) // 2
    return [("a", x) for x in links[:half]] + [("img", i) for i in imgs] + [("a", x) for x in links[half:]]


# ----------------------------------------------------------------------------------------------
# WARC record framing


Headers = list[tuple[str, str]]


def frame_record(headers: Headers, block: bytes, compress: bool = False) -> bytes:
    """One WARC record as bytes (`Content-Length` added), as its own gzip member if `compress`.
    Tests use it to put damaged records between good ones."""
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    head += f"Content-Length: {len(block)}\r\n\r\n"
    rec = head.encode("utf-8") + block + b"\r\n\r\n"
    if not compress:
        return rec
    c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
    return c.compress(rec) + c.flush()


def _record_id(rng: random.Random) -> str:
    return f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>"


def _date(i: int) -> str:
    t = datetime(2024, 12, 1, tzinfo=timezone.utc) + timedelta(seconds=7 * i)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: str, records: Iterable[tuple[Headers, bytes]], compress: bool | None) -> int:
    """Write records to `path` atomically; returns how many."""
    z = path.endswith(".gz") if compress is None else compress
    n = 0
    with fsio.atomic_open(path) as f:
        for headers, block in records:
            f.write(frame_record(headers, block, z))
            n += 1
    return n


# ----------------------------------------------------------------------------------------------
# WAT


def _maybe_shuffle(d: dict, rng: random.Random, shuffle: bool) -> dict:
    if not shuffle:
        return d
    items = list(d.items())
    rng.shuffle(items)
    return dict(items)


def _links_json(page: Page, rng: random.Random, shuffle: bool) -> list[dict]:
    out = []
    for kind, item in _body_items(page):
        if kind == "a":
            href, text = item
            out.append(_maybe_shuffle({"path": "A@/href", "url": _attr(href), "text": text}, rng, shuffle))
        else:
            img: Img = item
            d: dict = {"path": "IMG@/src", "url": _attr(img.src)}
            if img.alt is not None:
                d["alt"] = _attr(img.alt)
            if img.title is not None:
                d["title"] = _attr(img.title)
            out.append(_maybe_shuffle(d, rng, shuffle))
    if page.license:
        out.append({"path": "A@/href", "url": _attr(page.license), "rel": "license", "text": "Creative Commons License"})
    return out


def _http_headers(n_body: int, charset: str, list_headers: bool) -> dict:
    h: dict = {
        "Date": "Sun, 01 Dec 2024 00:00:00 GMT",
        "Content-Type": f"text/html; charset={charset}",
        "Content-Length": str(n_body),
        "Server": "nginx",
    }
    if list_headers:  # repeated headers, as Common Crawl writes them since CC-MAIN-2024-51
        h["Set-Cookie"] = ["a=1; Path=/", "b=2; Path=/"]
        h["Vary"] = ["Accept-Encoding", "Cookie"]
    else:
        h["Set-Cookie"] = "a=1; Path=/"
    return h


def _wat_records(page: Page, i: int, rng: random.Random, warc_name: str, list_headers: bool, shuffle: bool):
    """The three WAT metadata records (request, response, metadata) for one page."""
    body = page_html(page).encode(page.charset, errors="xmlcharrefreplace")
    date = _date(i)
    req_id, resp_id, meta_id = _record_id(rng), _record_id(rng), _record_id(rng)
    protocol: object = ["h2", "tls/1.3"] if list_headers else "h2"
    host = page.url.split("/")[2] if page.url.count("/") >= 2 else "example.com"
    offset = 1000 + i * 4000

    def envelope(warc_type: str, rid: str, payload: dict, length: int) -> dict:
        whm = {
            "WARC-Type": warc_type,
            "WARC-Date": date,
            "WARC-Record-ID": rid,
            "WARC-Target-URI": page.url,
            "Content-Length": str(length),
            "WARC-Protocol": protocol,
        }
        return {
            "Container": {"Filename": warc_name, "Compressed": True, "Offset": str(offset)},
            "Envelope": _maybe_shuffle(
                {
                    "Format": "WARC",
                    "WARC-Header-Length": "420",
                    "Actual-Content-Length": str(length),
                    "WARC-Header-Metadata": _maybe_shuffle(whm, rng, shuffle),
                    "Block-Digest": "sha1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                    "Payload-Metadata": payload,
                },
                rng,
                shuffle,
            ),
        }

    request = envelope(
        "request",
        req_id,
        {
            "Actual-Content-Type": "application/http; msgtype=request",
            "HTTP-Request-Metadata": {
                "Request-Message": {"Method": "GET", "Path": "/" + page.url.split("/", 3)[-1], "Version": "HTTP/1.1"},
                "Headers": {"Host": host, "User-Agent": "CCBot/2.0 (https://commoncrawl.org/faq/)", "Accept": "text/html"},
                "Headers-Length": "180",
                "Entity-Length": "0",
            },
        },
        220,
    )
    head: dict = {
        "Title": page.title,
        "Metas": [{"name": "viewport", "content": "width=device-width"}, {"charset": page.charset}],
        "Link": [{"path": "LINK@/href", "url": "/static/site.css", "rel": "stylesheet"}],
    }
    if page.base is not None:
        head["Base"] = _attr(page.base)
    html_meta = {"Head": _maybe_shuffle(head, rng, shuffle), "Links": _links_json(page, rng, shuffle)}
    response = envelope(
        "response",
        resp_id,
        {
            "Actual-Content-Type": "application/http; msgtype=response",
            "HTTP-Response-Metadata": _maybe_shuffle(
                {
                    "Response-Message": {"Status": "200", "Version": "HTTP/1.1", "Reason": "OK"},
                    "Headers": _http_headers(len(body), page.charset, list_headers),
                    "Headers-Length": "200",
                    "Entity-Length": str(len(body)),
                    "Entity-Digest": "sha1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB",
                    "HTML-Metadata": html_meta,
                },
                rng,
                shuffle,
            ),
        },
        len(body) + 200,
    )
    metadata = envelope(
        "metadata",
        meta_id,
        {
            "Actual-Content-Type": "application/warc-fields",
            "WARC-Metadata-Metadata": {"Metadata-Records": [{"Name": "fetchTimeMs", "Value": str(100 + i % 900)}]},
        },
        30,
    )
    for rid, doc in ((req_id, request), (resp_id, response), (meta_id, metadata)):
        headers = [
            ("WARC-Type", "metadata"),
            ("WARC-Target-URI", page.url),
            ("WARC-Date", date),
            ("WARC-Record-ID", _record_id(rng)),
            ("WARC-Refers-To", rid),
            ("Content-Type", "application/json"),
        ]
        yield headers, orjson.dumps(doc)


def _warcinfo(filename: str, rng: random.Random, software: str) -> tuple[Headers, bytes]:
    block = f"Software-Info: {software}\r\nExtracted-Date: Sun, 01 Dec 2024 00:00:00 GMT\r\n\r\n".encode()
    return [
        ("WARC-Type", "warcinfo"),
        ("WARC-Date", _date(0)),
        ("WARC-Filename", filename),
        ("WARC-Record-ID", _record_id(rng)),
        ("Content-Type", "application/warc-fields"),
    ], block


def wat_records(
    pages: Iterable[Page],
    *,
    seed: int = 0,
    list_headers: bool = False,
    shuffle_keys: bool = False,
    crawl: str = "CC-MAIN-2024-51",
    filename: str = "generated.warc.wat.gz",
) -> Iterator[tuple[Headers, bytes]]:
    """The (WARC headers, JSON block) of each record of a WAT describing `pages`, warcinfo first."""
    rng = random.Random(seed)
    warc_name = f"crawl-data/{crawl}/segments/0/warc/{filename.replace('.wat', '')}"
    yield _warcinfo(filename, rng, "ia-web-commons.1.1.10-SNAPSHOT")
    for i, page in enumerate(pages):
        yield from _wat_records(page, i, rng, warc_name, list_headers, shuffle_keys)


def write_wat(
    pages: Iterable[Page],
    path: str,
    *,
    compress: bool | None = None,
    seed: int = 0,
    list_headers: bool = False,
    shuffle_keys: bool = False,
    crawl: str = "CC-MAIN-2024-51",
) -> int:
    """Write a WAT describing `pages` (gzip when `compress`, or when None and the path ends in
    .gz). Returns the number of records written (warcinfo included)."""
    records = wat_records(pages, seed=seed, list_headers=list_headers, shuffle_keys=shuffle_keys,
                          crawl=crawl, filename=path.rpartition("/")[2])
    return _write(path, records, compress)


# ----------------------------------------------------------------------------------------------
# WARC


def warc_records(pages: Iterable[Page], *, seed: int = 0) -> Iterator[tuple[Headers, bytes]]:
    """The records of the WARC that `wat_records` describes: warcinfo, then per page a request,
    a response with the page's HTML and a metadata record."""
    rng = random.Random(seed)
    yield _warcinfo("generated.warc.gz", rng, "Apache Nutch 1.20 (modified, https://commoncrawl.org/)")
    for i, page in enumerate(pages):
        body = page_html(page).encode(page.charset, errors="xmlcharrefreplace")
        host = page.url.split("/")[2] if page.url.count("/") >= 2 else "example.com"
        path_q = "/" + page.url.split("/", 3)[-1] if page.url.count("/") >= 3 else "/"
        req = f"GET {path_q} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: CCBot/2.0\r\n\r\n".encode()
        resp = (
            f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset={page.charset}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        req_id, resp_id = _record_id(rng), _record_id(rng)
        common = [("WARC-Target-URI", page.url), ("WARC-Date", _date(i))]
        yield [("WARC-Type", "request"), ("WARC-Record-ID", req_id), *common,
               ("Content-Type", "application/http; msgtype=request")], req
        yield [("WARC-Type", "response"), ("WARC-Record-ID", resp_id), *common,
               ("WARC-Concurrent-To", req_id), ("Content-Type", "application/http; msgtype=response")], resp
        yield [("WARC-Type", "metadata"), ("WARC-Record-ID", _record_id(rng)), *common,
               ("WARC-Concurrent-To", resp_id), ("Content-Type", "application/warc-fields")], \
            f"fetchTimeMs: {100 + i % 900}\r\n".encode()


def write_warc(pages: Iterable[Page], path: str, *, compress: bool | None = None, seed: int = 0) -> int:
    """Write the WARC of `pages` (see `warc_records`). Returns the number of records written."""
    return _write(path, warc_records(pages, seed=seed), compress)


# ----------------------------------------------------------------------------------------------
# A varied random crawl

_WORDS: dict[str, tuple[list[str], list[str], list[str]]] = {
    # language: (adjectives, nouns, phrases joining them)
    "en": (
        ["red", "old", "beautiful", "small", "wooden", "modern", "sunny", "quiet", "green", "famous", "large", "blue", "ancient", "busy", "snowy", "bright", "empty", "crowded", "narrow", "golden", "rustic", "tiny"],
        ["house", "mountain", "river", "kitchen", "garden", "bicycle", "castle", "beach", "market", "bridge", "church", "harbour", "street", "forest", "lake", "train", "village", "tower", "island", "library", "farm", "square"],
        ["a {a} {n} near the {n2}", "the {a} {n} in the morning", "photo of a {a} {n} with a {n2}",
         "view of the {n} from the {a} {n2}",
         "close-up of the {a} {n}", "our {a} {n} after the rain", "{a} {n} and {n2} at sunset"],
    ),
    "de": (
        ["rote", "alte", "schöne", "kleine", "moderne", "sonnige", "ruhige", "grüne", "berühmte", "hölzerne", "große", "blaue", "uralte", "belebte", "verschneite", "helle", "leere", "volle", "schmale", "goldene", "rustikale", "winzige"],
        ["Haus", "Berg", "Fluss", "Küche", "Garten", "Fahrrad", "Burg", "Strand", "Markt", "Brücke", "Kirche", "Hafen", "Straße", "Wald", "See", "Zug", "Dorf", "Turm", "Insel", "Bibliothek", "Hof", "Platz"],
        ["eine {a} {n} neben dem {n2}", "das {a} {n} am Morgen mit dem {n2}", "Foto von einem {n} und der {a} {n2}",
         "Blick auf den {n} über die {a} {n2}",
         "Nahaufnahme der {a} {n}", "unser {a} {n} nach dem Regen", "{a} {n} und {n2} bei Sonnenuntergang"],
    ),
    "fr": (
        ["rouge", "vieille", "belle", "petite", "moderne", "ensoleillée", "calme", "verte", "célèbre", "ancienne", "grande", "bleue", "antique", "animée", "enneigée", "lumineuse", "vide", "bondée", "étroite", "dorée", "rustique", "minuscule"],
        ["maison", "montagne", "rivière", "cuisine", "jardin", "vélo", "château", "plage", "marché", "pont", "église", "port", "rue", "forêt", "lac", "train", "village", "tour", "île", "bibliothèque", "ferme", "place"],
        ["une {n} {a} près de la {n2}", "la {n} {a} le matin avec le {n2}", "photo d'une {n} et du {n2} {a}",
         "vue sur la {n} depuis le {n2}",
         "gros plan sur la {n} {a}", "notre {n} {a} après la pluie", "la {n} et le {n2} au coucher du soleil"],
    ),
    "es": (
        ["roja", "vieja", "hermosa", "pequeña", "moderna", "soleada", "tranquila", "verde", "famosa", "antigua", "grande", "azul", "antiquísima", "concurrida", "nevada", "luminosa", "vacía", "llena", "estrecha", "dorada", "rústica", "diminuta"],
        ["casa", "montaña", "río", "cocina", "jardín", "bicicleta", "castillo", "playa", "mercado", "puente", "iglesia", "puerto", "calle", "bosque", "lago", "tren", "pueblo", "torre", "isla", "biblioteca", "granja", "plaza"],
        ["una {n} {a} cerca del {n2}", "la {n} {a} por la mañana con el {n2}", "foto de una {n} y el {n2}",
         "vista de la {n} desde el {n2}",
         "primer plano de la {n} {a}", "nuestra {n} {a} después de la lluvia", "la {n} y el {n2} al atardecer"],
    ),
    "it": (
        ["rossa", "vecchia", "bella", "piccola", "moderna", "soleggiata", "tranquilla", "verde", "famosa", "antica", "grande", "azzurra", "antichissima", "affollata", "innevata", "luminosa", "vuota", "piena", "stretta", "dorata", "rustica", "minuscola"],
        ["casa", "montagna", "fiume", "cucina", "giardino", "bicicletta", "castello", "spiaggia", "mercato", "ponte", "chiesa", "porto", "strada", "foresta", "lago", "treno", "villaggio", "torre", "isola", "biblioteca", "fattoria", "piazza"],
        ["una {n} {a} vicino al {n2}", "la {n} {a} di mattina con il {n2}", "foto di una {n} e del {n2}",
         "vista della {n} dal {n2}",
         "primo piano della {n} {a}", "la nostra {n} {a} dopo la pioggia", "la {n} e il {n2} al tramonto"],
    ),
    "ru": (
        ["красный", "старый", "красивый", "маленький", "современный", "солнечный", "тихий", "зелёный", "известный", "деревянный", "большой", "синий", "древний", "шумный", "заснеженный", "светлый", "пустой", "людный", "узкий", "золотой", "сельский", "крошечный"],
        ["дом", "гора", "река", "кухня", "сад", "велосипед", "замок", "пляж", "рынок", "мост", "храм", "порт", "улица", "лес", "озеро", "поезд", "деревня", "башня", "остров", "библиотека", "ферма", "площадь"],
        ["{a} {n} рядом с рекой и {n2}", "фотография: {a} {n} утром", "вид на {n} и {a} {n2} с горы",
         "это {a} {n} в нашем городе",
         "крупным планом: {a} {n}", "наш {a} {n} после дождя", "{a} {n} и {n2} на закате"],
    ),
    "ja": (
        ["赤い", "古い", "美しい", "小さな", "現代的な", "静かな", "緑の", "有名な", "木製の", "明るい", "大きな", "青い", "古代の", "にぎやかな", "雪の", "明るい色の", "空っぽの", "混雑した", "狭い", "金色の", "素朴な", "小さい"],
        ["家", "山", "川", "台所", "庭", "自転車", "城", "海岸", "市場", "橋", "教会", "港", "通り", "森", "湖", "電車", "村", "塔", "島", "図書館", "農場", "広場"],
        ["{n2}の近くにある{a}{n}です", "朝の{a}{n}の写真", "{n2}から見た{a}{n}の景色", "私たちの町の{a}{n}",
         "雨上がりの{a}{n}", "夕暮れの{a}{n}と{n2}", "{a}{n}のクローズアップ"],
    ),
    "zh": (
        ["红色的", "古老的", "美丽的", "小", "现代的", "安静的", "绿色的", "著名的", "木制的", "明亮的", "大", "蓝色的", "古代的", "热闹的", "下雪的", "明亮", "空荡荡的", "拥挤的", "狭窄的", "金色的", "朴素的", "小小的"],
        ["房子", "山", "河", "厨房", "花园", "自行车", "城堡", "海滩", "市场", "桥", "教堂", "港口", "街道", "森林", "湖", "火车", "村庄", "塔", "岛", "图书馆", "农场", "广场"],
        ["{n2}旁边的{a}{n}", "早上{a}{n}的照片", "从{n2}看{a}{n}的风景", "我们城市里{a}{n}",
         "雨后{a}{n}", "日落时{a}{n}和{n2}", "{a}{n}的特写"],
    ),
}

_HOSTS = ["www.example.com", "blog.example.org", "shop.example.net", "news.example.de", "photos.example.fr",
          "cdn.example.io", "www.example.es", "www.example.it", "www.example.ru", "www.example.jp", "www.example.cn"]
_CHROME_ALTS = ["Logo", "Facebook", "Twitter", "Instagram", "YouTube", "Pinterest", "LinkedIn", "Search",
                "Home", "RSS feed", "Print this page", "Share on Facebook", "Back to top", "Menu", "Close"]


def _nolang_alt(rng: random.Random) -> str:
    """File-name-like or empty alt texts, varied like real ones (camera names, sizes, ids)."""
    kind = rng.randrange(8)
    if kind == 0:
        return f"IMG_2024{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}_{rng.randrange(10**6):06d}"
    if kind == 1:
        return f"DSC{rng.randrange(10**5):05d}"
    if kind == 2:
        return str(rng.randrange(10**7, 10**8))
    if kind == 3:
        return f"banner-{rng.choice([728, 468, 300, 160])}x{rng.choice([90, 60, 250, 600])}"
    if kind == 4:
        return ""
    if kind == 5:
        return f"P{rng.randrange(10**7):07d}.JPG"
    if kind == 6:
        return "➜ ➜ ➜"
    return f"photo {rng.randrange(1, 40)}"


def sentence(lang: str, rng: random.Random) -> str:
    """A short natural-looking phrase in `lang` (one of the generator's languages)."""
    adjs, nouns, templates = _WORDS[lang]
    t = rng.choice(templates)
    return t.format(a=rng.choice(adjs), n=rng.choice(nouns), n2=rng.choice(nouns))


LANGUAGES: tuple[str, ...] = tuple(_WORDS)


def caption(lang: str, rng: random.Random) -> str:
    """An alt text: one phrase, or two joined as captions often are."""
    text = sentence(lang, rng)
    if rng.random() < 0.4:
        text += rng.choice([", ", " - ", ". "]) + sentence(lang, rng)
    return text


@dataclass
class Mix:
    """How often each kind of image appears in `random_pages` (probabilities per image).

    The defaults are sized on real crawl data: ~2 KB of gzip per WAT record as in a full
    Common Crawl WAT (300-400 MB for 120-180k records), and a few alt-carrying images per page
    (the CC-MAIN-2020-34 sample has 32 alts on 16 pages, whirlwind's page 7)."""

    no_alt: float = 0.5
    nolang_alt: float = 0.08
    chrome_alt: float = 0.04  # site furniture ("Logo", "Facebook"): the same texts on every site
    relative: float = 0.25
    protocol_relative: float = 0.08
    bad_source: float = 0.06  # data:, javascript:, .svg, .gif
    duplicate: float = 0.03
    dirty_text: float = 0.04  # mojibake, control characters, entities, runs of whitespace
    base: float = 0.15  # per page: has a <base href>
    license: float = 0.1  # per page: has a CC licence link
    images_per_page: tuple[int, int] = (0, 20)
    links_per_page: tuple[int, int] = (60, 360)
    languages: dict[str, float] = field(
        default_factory=lambda: {"en": 0.45, "de": 0.1, "fr": 0.1, "es": 0.08, "it": 0.06, "ru": 0.07, "ja": 0.07, "zh": 0.07}
    )


def _dirty(text: str, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # UTF-8 read as cp1252: what ftfy repairs
        try:
            return text.encode("utf-8").decode("cp1252")
        except UnicodeDecodeError:
            return text + " caf\u00c3\u00a9"
    if kind == 1:
        return text.replace(" ", "\t\x07 ", 1) + "\x1f"
    if kind == 2:
        return text + " & more  \n  "
    return "   " + text.replace(" ", "\u00a0\u00a0", 1) + "\r\n"


def random_pages(n: int, seed: int = 0, mix: Mix | None = None) -> Iterator[Page]:
    """`n` reproducible pages covering what extract must handle (see `Mix`)."""
    mix = mix or Mix()
    rng = random.Random(seed)
    langs, weights = zip(*mix.languages.items())
    for i in range(n):
        host = rng.choice(_HOSTS)
        scheme = "https" if rng.random() < 0.7 else "http"
        page_url = f"{scheme}://{host}/section{i % 37}/article-{i}.html?ref={rng.randrange(1000)}"
        lang = rng.choices(langs, weights)[0]
        base = None
        if rng.random() < mix.base:
            base = rng.choice([f"{scheme}://static.{host.split('.', 1)[-1]}/media/", "/assets/", "//mirror.example.com/m/"])
        imgs: list[Img] = []
        for j in range(rng.randint(*mix.images_per_page)):
            r = rng.random()
            ext = rng.choice([".jpg", ".jpg", ".jpeg", ".png", ".webp", ".JPG"])
            name = f"img{i}_{j}{ext}"
            if r < mix.bad_source:
                src = rng.choice(["data:image/png;base64,iVBORw0KGgo=", "javascript:void(0)", f"/icons/{name}.svg",
                                  f"https://{host}/anim/{name}.gif"])
            elif r < mix.bad_source + mix.relative:
                src = rng.choice([f"images/{name}", f"../img/{name}", f"/static/{name}", f"./{name}?w=640&h=480"])
            elif r < mix.bad_source + mix.relative + mix.protocol_relative:
                src = f"//cdn.example.com/{host}/{name}"
            else:
                src = f"https://img.example.com/{i % 100}/{name}"
            a = rng.random()
            if a < mix.no_alt:
                alt: str | None = None
            elif a < mix.no_alt + mix.nolang_alt:
                alt = _nolang_alt(rng)
            elif a < mix.no_alt + mix.nolang_alt + mix.chrome_alt:
                alt = rng.choice(_CHROME_ALTS)
            else:
                alt = caption(lang if rng.random() < 0.9 else rng.choice(langs), rng)
                if rng.random() < mix.dirty_text:
                    alt = _dirty(alt, rng)
            img = Img(src, alt, title=alt if rng.random() < 0.1 else None)
            imgs.append(img)
            if rng.random() < mix.duplicate:
                imgs.append(img)
        links = [(f"/section{rng.randrange(40)}/article-{rng.randrange(10**6)}.html", sentence(lang, rng))
                 for _ in range(rng.randint(*mix.links_per_page))]
        yield Page(
            url=page_url,
            images=tuple(imgs),
            base=base,
            license=CC_LICENSE if rng.random() < mix.license else None,
            title=sentence(lang, rng),
            links=tuple(links),
            lang=lang,
        )
