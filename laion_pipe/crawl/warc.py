"""Image links of one WARC response: `<img src alt>` from the page's HTML.

A real HTML parser (lexbor, through selectolax) does what browsers do with broken markup,
entities and `<base href>`; the result has the shape the WAT reader gives (`PageImages`) so the
same rules apply to both and, for the same page, both give the same pairs.

The body is decoded here because lexbor reads bytes as UTF-8: the charset comes from the HTTP
header, else from a `<meta charset>` / `http-equiv` in the first kilobytes, else a BOM, else
UTF-8; bytes that do not decode become U+FFFD instead of failing the page.
"""
from __future__ import annotations

import codecs
import re

from selectolax.lexbor import LexborHTMLParser

from .pages import PageImages
from .wat import CC_LICENSE_PART

_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.I)
# WHATWG Encoding: labels that browsers map to a superset.
_ALIASES = {"gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "iso-8859-1": "cp1252",
            "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252",
            "iso-8859-9": "cp1254", "tis-620": "cp874", "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
            "shift_jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "big5": "big5hkscs"}
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = _ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_html(body: bytes, http_charset: str | None) -> str:
    """The document's text, decoded as a browser would pick the encoding (see module doc)."""
    enc = _codec(http_charset)
    if enc is None:
        if body.startswith(codecs.BOM_UTF8):
            enc = "utf-8-sig"
        elif body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            enc = "utf-16"
        else:
            m = _META_CHARSET.search(body, 0, 4096)
            enc = _codec(m.group(1).decode("ascii", "replace")) if m else None
    return body.decode(enc or "utf-8", errors="replace")


def is_html(http_content_type: str | None, body: bytes) -> bool:
    if http_content_type:
        return http_content_type.strip().lower().startswith(_HTML_TYPES)
    start = body[:1024].lower()
    return b"<html" in start or b"<!doctype html" in start


def page_from_html(body: bytes, page_url: str, http_charset: str | None, offset: int) -> PageImages:
    """Parse the HTML of a response and list its `<img>` that have a src attribute."""
    text = decode_html(body, http_charset)
    tree = LexborHTMLParser(text)
    base_node = tree.css_first("base[href]")
    base = base_node.attributes.get("href") if base_node is not None else None
    images: list[tuple[str, str | None]] = []
    for node in tree.css("img"):
        attrs = node.attributes
        src = attrs.get("src")
        if src is None:
            continue
        if "alt" in attrs:
            images.append((src, attrs["alt"] or ""))
        else:
            images.append((src, None))
    license = None
    if "creativecommons.org/licenses" in text:
        for node in tree.css("a[href], link[href]"):
            href = node.attributes.get("href")
            if href and CC_LICENSE_PART in href:
                license = href
                break
    return PageImages(page_url=page_url, base=base or None, images=images, license=license, offset=offset)
