"""Image links of one WAT record (the JSON Common Crawl derives from a WARC response).

ia-web-commons lists a page's links in `Envelope.Payload-Metadata.HTTP-Response-Metadata.
HTML-Metadata.Links` in document order; an `<img>` is `{"path": "IMG@/src", "url": ...}` plus
`alt` only when the attribute exists. Values are the raw attribute text of the HTML source, so
entities (`&amp;`) are decoded here, to give what an HTML parser of the same page gives.

Speed: two thirds of a WAT's records describe requests and crawler metadata and cannot hold an
image link. A byte search for `IMG@` skips them before any JSON is parsed; such a record is only
checked to be a whole JSON object (starts with `{`, ends with `}`), which catches truncation.
"""
from __future__ import annotations

import html

import orjson

from .pages import BadRecord, PageImages

IMG_MARK = b"IMG@"
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


def _images(links: list) -> tuple[list[tuple[str, str | None]], int]:
    """(src, alt) of the IMG@/src entries, and how many entries were unusable."""
    try:  # the common case, at C speed: every entry an object
        imgs = [link for link in links if link.get("path") == "IMG@/src"]
    except AttributeError:
        imgs = [link for link in links if type(link) is dict and link.get("path") == "IMG@/src"]
        bad = len(links) - sum(1 for link in links if type(link) is dict)
    else:
        bad = 0
    out: list[tuple[str, str | None]] = []
    for link in imgs:
        url = link.get("url")
        alt = link.get("alt")
        if type(url) is not str or (alt is not None and type(alt) is not str):
            bad += 1
            continue
        out.append((_unescape(url), _unescape(alt) if alt else alt))
    return out, bad


def page_from_wat(payload: bytes, target_uri: str | None, offset: int) -> PageImages | None:
    """The page's image links, or None for a record that describes no HTML page with images.
    Raises `BadRecord` for a record that should hold them but cannot be read."""
    complete = payload[:1] == b"{" and payload.endswith(_JSON_ENDS)
    if complete and IMG_MARK not in payload:
        return None  # cannot hold an image link: not worth a parse
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
        return None  # a request, or a non-HTML response: no images, nothing wrong
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

    images, bad_links = _images(links)
    if bad_links:
        warnings.append(("bad_link", f"{bad_links} link entries without a string url/alt"))

    license = None
    if _CC_MARK in payload:
        head_links = head.get("Link")
        for link in (*links, *(head_links if isinstance(head_links, list) else ())):
            if type(link) is dict and str(link.get("path", "")).startswith(("A@", "LINK@")):
                url = link.get("url")
                if type(url) is str and CC_LICENSE_PART in url:
                    license = _unescape(url)
                    break

    return PageImages(
        page_url=page_url,
        base=_unescape(base) if base else None,
        images=images,
        license=license,
        offset=offset,
        warnings=warnings,
    )
