"""Image links of one WAT record (the JSON Common Crawl derives from a WARC response).

ia-web-commons lists a page's links in `Envelope.Payload-Metadata.HTTP-Response-Metadata.
HTML-Metadata.Links` in document order; an `<img>` is `{"path": "IMG@/src", "url": ...}` plus
`alt` only when the attribute exists. Values are the raw attribute text of the HTML source, so
entities (`&amp;`) are decoded here, to give what an HTML parser of the same page gives.

Speed, which is most of extract's cost:
- two thirds of a WAT's records describe requests and crawler metadata and cannot hold an image
  link. A byte search for `IMG@` skips them before any JSON is parsed; such a record is only
  checked to be a whole JSON object (starts with `{`, ends with `}`), which catches truncation;
- the others are decoded by msgspec into small typed structs: the whole document is still
  validated as JSON, but only the few fields used here become Python objects (about twice as
  fast as building every dict with orjson). A record that does not fit the expected shape (a
  field of another type, a list that is not a list, invalid UTF-8 in a field used here) goes
  through `page_from_doc`, the careful path over plain orjson objects, which says what is wrong
  with it and keeps what it can. (Invalid UTF-8 inside a field that is skipped, such as an
  anchor's text, is not looked for: it changes nothing extract writes.)
"""
from __future__ import annotations

import html

import msgspec
import orjson

from .pages import BadRecord, PageImages

IMG_MARK = b"IMG@"
IMG_PATH = "IMG@/src"
_JSON_ENDS = (b"}", b"}\n", b"}\r\n")
_CC_MARK = b"creativecommons.org/licenses"
CC_LICENSE_PART = "creativecommons.org/licenses/"


def _unescape(s: str) -> str:
    return html.unescape(s) if "&" in s else s


def first_str(value: object) -> str | None:
    """A header value: a string, or (Common Crawl since CC-MAIN-2024-51) a list of strings."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        for v in value:
            if isinstance(v, str):
                return v
    return None


# ----------------------------------------------------------------------------------------------
# Fast path: the expected shape as msgspec structs (unknown keys are skipped, not materialized)


class _Link(msgspec.Struct, gc=False):
    path: str = ""
    url: str | None = None
    alt: str | None = None


class _Head(msgspec.Struct, gc=False):
    Base: object = None
    Link: list[_Link] = []


class _Html(msgspec.Struct, gc=False):
    Links: list[_Link] = []
    Head: _Head | None = None


class _Response(msgspec.Struct, gc=False):
    html: _Html | None = msgspec.field(default=None, name="HTML-Metadata")


class _Payload(msgspec.Struct, gc=False):
    response: _Response | None = msgspec.field(default=None, name="HTTP-Response-Metadata")


class _Envelope(msgspec.Struct, gc=False):
    payload: _Payload | None = msgspec.field(default=None, name="Payload-Metadata")


class _Doc(msgspec.Struct, gc=False):
    Envelope: _Envelope | None = None


_DECODER = msgspec.json.Decoder(_Doc)


def _pairs(imgs: list) -> tuple[list[tuple[str, str | None]], int]:
    """(src, alt) of IMG@/src entries given as (url, alt), decoded; and how many were unusable."""
    out: list[tuple[str, str | None]] = []
    bad = 0
    for url, alt in imgs:
        if type(url) is not str or (alt is not None and type(alt) is not str):
            bad += 1
            continue
        out.append((_unescape(url), _unescape(alt) if alt else alt))
    return out, bad


def _license(candidates: list[tuple[object, object]]) -> str | None:
    """The first Creative Commons licence among (path, url) of the page's links."""
    for path, url in candidates:
        if isinstance(path, str) and path.startswith(("A@", "LINK@")) and type(url) is str and CC_LICENSE_PART in url:
            return _unescape(url)
    return None


def page_from_wat(payload: bytes, target_uri: str | None, offset: int) -> PageImages | None:
    """The page's image links, or None for a record that describes no HTML page with images.
    Raises `BadRecord` for a record that should hold them but cannot be read."""
    complete = payload[:1] == b"{" and payload.endswith(_JSON_ENDS)
    if complete and IMG_MARK not in payload:
        return None  # cannot hold an image link: not worth a parse
    if not complete or not target_uri:
        return page_from_doc(payload, target_uri, offset)
    try:
        doc = _DECODER.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return page_from_doc(payload, target_uri, offset)  # says precisely what is wrong
    env = doc.Envelope
    if env is None:
        raise BadRecord("missing_field", "no Envelope")
    resp = env.payload.response if env.payload is not None else None
    meta = resp.html if resp is not None else None
    if meta is None:
        return None  # a request, or a non-HTML response: no images, nothing wrong
    links = meta.Links
    # One comprehension over all links (hundreds per page) keeps the per-link cost in C.
    images, bad = _pairs([(link.url, link.alt) for link in links if link.path == IMG_PATH])
    head = meta.Head
    base = first_str(head.Base) if head is not None else None
    license = None
    if _CC_MARK in payload:  # only the links whose url names a licence are looked at closely
        license = _license([(link.path, link.url) for link in (*links, *(head.Link if head is not None else ()))
                            if link.url and CC_LICENSE_PART in link.url])
    warnings = [("bad_link", f"{bad} IMG link(s) without a string url/alt")] if bad else []
    return PageImages(page_url=target_uri, base=_unescape(base) if base else None, images=images,
                      license=license, offset=offset, warnings=warnings)


# ----------------------------------------------------------------------------------------------
# Careful path: plain JSON objects, every level checked


def _loads(payload: bytes, warnings: list[tuple[str, str]]) -> object:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        if "utf-8" not in str(e).lower():
            raise BadRecord("not_json", str(e)) from None
    # Invalid UTF-8 somewhere in the record: keep what can be kept, note the damage.
    warnings.append(("invalid_utf8", "record is not valid UTF-8; bad bytes replaced"))
    try:
        return orjson.loads(payload.decode("utf-8", errors="replace"))
    except orjson.JSONDecodeError as e:
        raise BadRecord("not_json", str(e)) from None


def _dict(parent: dict, key: str) -> dict | None:
    v = parent.get(key)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise BadRecord("bad_structure", f"{key} is {type(v).__name__}, not an object")
    return v


def page_from_doc(payload: bytes, target_uri: str | None, offset: int) -> PageImages | None:
    """`page_from_wat` over plain orjson objects: slower, and names what is wrong with a
    record (`not_json`, `missing_field`, `bad_structure`) or salvages it (`invalid_utf8`,
    `bad_link` for single unusable entries)."""
    warnings: list[tuple[str, str]] = []
    doc = _loads(payload, warnings)
    if not isinstance(doc, dict):
        raise BadRecord("bad_structure", "record is not a JSON object")
    env = _dict(doc, "Envelope")
    if env is None:
        raise BadRecord("missing_field", "no Envelope")
    pm = _dict(env, "Payload-Metadata")
    resp = _dict(pm, "HTTP-Response-Metadata") if pm is not None else None
    meta = _dict(resp, "HTML-Metadata") if resp is not None else None
    if meta is None:
        return None
    links = meta.get("Links") or []
    if not isinstance(links, list):
        raise BadRecord("bad_structure", "HTML-Metadata.Links is not a list")

    page_url = target_uri
    if not page_url:
        whm = env.get("WARC-Header-Metadata")
        page_url = first_str(whm.get("WARC-Target-URI")) if isinstance(whm, dict) else None
    if not page_url:
        raise BadRecord("missing_field", "no WARC-Target-URI")

    head = meta.get("Head")
    head = head if isinstance(head, dict) else {}
    base = first_str(head.get("Base"))
    images, bad = _pairs([(link.get("url"), link.get("alt")) if type(link) is dict else (None, None)
                          for link in links if type(link) is not dict or link.get("path") == IMG_PATH])
    if bad:
        warnings.append(("bad_link", f"{bad} IMG link(s) without a string url/alt"))
    license = None
    if _CC_MARK in payload:
        head_links = head.get("Link")
        license = _license([(link.get("path"), link.get("url")) for link in (*links, *(head_links if isinstance(head_links, list) else ()))
                            if type(link) is dict])
    return PageImages(page_url=page_url, base=_unescape(base) if base else None, images=images,
                      license=license, offset=offset, warnings=warnings)
