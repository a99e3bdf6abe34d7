"""LAION-5B's rules for (image URL, alt text) pairs: URL resolution, alt-text cleaning and the
filters, each returning a drop reason from `schema.DROP_REASONS` instead of a bare False, so the
funnel can say why every pair went.

What LAION did and what is configurable (see `config/extract.py`):
- URLs are resolved against the page's `<base href>` (itself resolved against the page URL) or
  the page URL, by the WHATWG URL standard as a browser does (LAION used Python's urljoin, which
  leaves spaces and upper-case hosts as written); kept only if http(s), with a hostname, at most
  2000 characters.
  `data:` and `javascript:` sources are dropped, and `.svg` / `.gif` images. LAION's code tested
  the end of the whole URL; here the extension is that of the URL's path, so `a.gif?w=10` is a
  GIF too and `/gif.php?x=1.jpg` is not.
- Alt texts are repaired with ftfy, control characters removed, whitespace collapsed, and
  truncated at 2000 characters. Texts shorter than 5 characters after cleaning are dropped
  (LAION's code); a minimum word count (the description's "5 words") is available too.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import can_ada
import ftfy
from ftfy import chardata
from ftfy.badness import BADNESS_RE, is_bad

# Format characters that render as nothing and only confuse text models. Joiners (U+200C/D)
# are kept: Persian, Indic scripts and emoji sequences need them.
_INVISIBLE = "\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff"
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f" + _INVISIBLE + "]")
_SPACES = re.compile(r"\s+")


def _ftfy_trigger() -> re.Pattern[str]:
    """Characters some ftfy fixer other than mojibake repair acts on, taken from ftfy's own
    tables. Line breaks are left out: ftfy only turns them into other whitespace, which the
    whitespace collapse does anyway."""
    chars = {"&", "\x1b", "\u02bc", *map(chr, range(0x2018, 0x2020)), *map(chr, range(0x80, 0xA0))}
    chars |= {chr(c) if isinstance(c, int) else c for c in chardata.LIGATURES}
    chars |= {chr(c) for c in chardata.WIDTH_MAP}
    chars |= {chr(c) for c in chardata.CONTROL_CHARS}
    body = "".join(re.escape(c) for c in sorted(chars))
    return re.compile(f"[{body}\ud800-\udfff]")


_FTFY_TRIGGER = _ftfy_trigger()


def _mojibake_hint() -> re.Pattern[str] | None:
    """Characters of which every match of ftfy's badness expression (`is_bad`, ~5 us a text)
    holds at least one: a text with none of them cannot be mojibake, and a one-class regex
    tells that in a fraction of the time. Derived from ftfy's own expression: for each of its
    alternatives, the required single character (a literal or a class) least common in real
    text (`cost`), so Cyrillic, Greek, CJK or accented text mostly skips `is_bad`.
    None (no shortcut) if the expression has a shape this does not understand."""
    try:
        from re import _constants as c, _parser as sre_parse  # type: ignore[attr-defined]
    except ImportError:  # Python < 3.11
        import sre_constants as c  # type: ignore[no-redef]
        import sre_parse  # type: ignore[no-redef]

    def chars(op, av) -> set[str] | None:
        if op is c.LITERAL:
            return {chr(av)}
        if op is not c.IN:
            return None
        out: set[str] = set()
        for iop, iav in av:
            if iop is c.LITERAL:
                out.add(chr(iav))
            elif iop is c.RANGE:
                out.update(map(chr, range(iav[0], iav[1] + 1)))
            else:  # NEGATE, CATEGORY (\w, \s): too wide to be of use
                return None
        return out

    def cost(cs: set[str]) -> tuple[int, ...]:
        """How common a class is in real text: ASCII is in every text, lower-case letters of
        other alphabets in most of theirs, then any letter, then the class's size."""
        letters = [ch for ch in cs if unicodedata.category(ch).startswith("L")]
        return (sum(ch.isascii() for ch in cs), sum(ch >= "\u0370" and ch.islower() for ch in letters),
                sum(ch >= "\u0370" for ch in letters), len(letters), len(cs))

    try:
        (op, av), = sre_parse.parse(BADNESS_RE.pattern, BADNESS_RE.flags).data
        if op is not c.BRANCH:
            return None
        hint: set[str] = set()
        for branch in av[1]:
            required = [cs for iop, iav in branch.data if (cs := chars(iop, iav))]
            if not required:
                return None
            hint |= min(required, key=cost)
    except (ValueError, TypeError, AttributeError):
        return None
    body = "".join(re.escape(ch) for ch in sorted(hint))
    return re.compile(f"[{body}]")


_MOJIBAKE_HINT = _mojibake_hint()


@dataclass(frozen=True)
class PairRules:
    """The thresholds of the rules; `from_config` takes them from the `extract:` section."""

    min_text_chars: int = 5
    min_words: int = 0
    max_text_chars: int = 2000
    max_url_chars: int = 2000
    excluded_extensions: tuple[str, ...] = (".svg", ".gif")

    @classmethod
    def from_config(cls, cfg) -> PairRules:
        return cls(
            min_text_chars=cfg.min_text_chars,
            min_words=cfg.min_words,
            max_text_chars=cfg.max_text_chars,
            max_url_chars=cfg.max_url_chars,
            excluded_extensions=tuple(e.lower() for e in cfg.excluded_extensions),
        )


def repair(s: str) -> str:
    """`ftfy.fix_text(s)`, without paying for it (~25 us a call) when it would change nothing
    but Unicode normalization: no mojibake (`is_bad`, ftfy's own test before it tries any
    re-decoding, itself skipped when the text holds none of the characters it needs) and no
    character one of its other fixers acts on. Tests check equality."""
    if s.isascii():
        # ASCII can only hold ftfy's HTML entities, escapes and control characters.
        if "&" not in s and (s.isprintable() or not _FTFY_TRIGGER.search(s)):
            return s
        return ftfy.fix_text(s)
    if not unicodedata.is_normalized("NFC", s):
        return ftfy.fix_text(s)  # ftfy normalizes, then looks again: mojibake may show only in NFC
    if _FTFY_TRIGGER.search(s) or ((_MOJIBAKE_HINT is None or _MOJIBAKE_HINT.search(s)) and is_bad(s)):
        return ftfy.fix_text(s)
    return s


def clean_text(raw: str, max_chars: int = 2000) -> str:
    """ftfy repair, control and invisible characters removed, whitespace collapsed to single
    spaces, stripped, truncated to `max_chars`. A huge text is cut to a few times `max_chars`
    first, so a 50 MB alt costs no more than a long one."""
    if len(raw) > 4 * max_chars + 64:
        raw = raw[: 4 * max_chars + 64]
    s = repair(raw)
    if not s.isprintable():
        s = _SPACES.sub(" ", _CONTROL.sub("", s))
    elif "  " in s:
        s = _SPACES.sub(" ", s)
    s = s.strip()
    if len(s) > max_chars:
        s = s[:max_chars].rstrip()
    return s


def text_reason(text: str, rules: PairRules) -> str | None:
    """Why a cleaned alt text is dropped, or None to keep it."""
    if len(text) < rules.min_text_chars:
        return "text_too_short"
    if rules.min_words and len(text.split()) < rules.min_words:
        return "too_few_words"
    return None


def page_base(page_url: str, base: str | None) -> can_ada.URL | None:
    """What the page's relative URLs resolve against: `<base href>` resolved on the page URL,
    else the page URL; None when the page URL itself is not a URL (only absolute sources work)."""
    try:
        page = can_ada.parse(page_url)
    except ValueError:
        return None
    if base:
        try:
            return page + base
        except ValueError:
            pass
    return page


def resolve_url(src: str, base: can_ada.URL | None, rules: PairRules) -> tuple[str | None, str | None]:
    """(absolute URL, None) for a usable image source, else (None, drop reason).

    Resolution follows the WHATWG URL standard (ada), as a browser does: surrounding spaces and
    inner tabs/newlines removed, host lower-cased, default port dropped, spaces in the path
    percent-encoded. The result is what a browser would request."""
    head = src[:16].lstrip().lower()
    if head.startswith("data:"):
        return None, "data_url"
    if head.startswith("javascript:"):
        return None, "javascript_url"
    try:
        url = base + src if base is not None else can_ada.parse(src.strip())
    except ValueError:
        return None, "bad_url"
    if url.protocol not in ("http:", "https:") or not url.hostname:
        return None, "bad_url"
    href = url.href
    if len(href) > rules.max_url_chars:
        return None, "url_too_long"
    if rules.excluded_extensions and url.pathname.lower().endswith(rules.excluded_extensions):
        return None, "excluded_extension"
    return href, None
