"""LAION's pair rules: URL resolution and filters with their drop reasons, alt-text cleaning, and
the proof (property-based) that skipping ftfy on clean text changes nothing."""
from __future__ import annotations

import time
from unittest import mock

import ftfy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from laion_pipe import rules
from laion_pipe.config import workflow_from_dict
from laion_pipe.rules import PairRules, clean_text, page_base, repair, resolve_url, text_reason
from laion_pipe.schema import DROP_REASONS

R = PairRules()
PAGE = "https://www.example.com/dir/page.html?q=1"


def _resolve(src: str, base: str | None = None, rules: PairRules = R):
    return resolve_url(src, page_base(PAGE, base), rules)


@pytest.mark.parametrize("src,url", [
    ("img.jpg", "https://www.example.com/dir/img.jpg"),
    ("./img.jpg", "https://www.example.com/dir/img.jpg"),
    ("../img.jpg", "https://www.example.com/img.jpg"),
    ("/img.jpg", "https://www.example.com/img.jpg"),
    ("//cdn.example.net/x/img.jpg", "https://cdn.example.net/x/img.jpg"),
    ("http://other.example/a.png", "http://other.example/a.png"),
    ("  https://other.example/a.png \n", "https://other.example/a.png"),
    ("https://other.example/a\n.png", "https://other.example/a.png"),
    ("HTTPS://Other.EXAMPLE:443/A.png", "https://other.example/A.png"),
    ("/a b.jpg", "https://www.example.com/a%20b.jpg"),
    ("?page=2", "https://www.example.com/dir/page.html?page=2"),
    ("/gif.php?x=1.jpg", "https://www.example.com/gif.php?x=1.jpg"),
])
def test_urls_resolve_like_a_browser(src, url):
    assert _resolve(src) == (url, None)


@pytest.mark.parametrize("base,url", [
    ("https://static.example.org/m/", "https://static.example.org/m/img.jpg"),
    ("/assets/", "https://www.example.com/assets/img.jpg"),
    ("//mirror.example.net/", "https://mirror.example.net/img.jpg"),
    ("http://[broken", "https://www.example.com/dir/img.jpg"),  # an unusable <base> is ignored
])
def test_base_href(base, url):
    assert _resolve("img.jpg", base) == (url, None)


@pytest.mark.parametrize("src,reason", [
    ("data:image/png;base64,AAAA", "data_url"),
    ("  DATA:image/gif;base64,R0lG", "data_url"),
    ("javascript:void(0)", "javascript_url"),
    ("JavaScript:x()", "javascript_url"),
    ("mailto:a@example.com", "bad_url"),
    ("ftp://example.com/a.jpg", "bad_url"),
    ("http://", "bad_url"),
    ("http://[::1", "bad_url"),
    ("file:///etc/passwd", "bad_url"),
    ("/icon.svg", "excluded_extension"),
    ("/anim.GIF", "excluded_extension"),
    ("/anim.gif?w=10", "excluded_extension"),
    ("/x/" + "a" * 2000 + ".jpg", "url_too_long"),
])
def test_url_drop_reasons(src, reason):
    assert _resolve(src) == (None, reason)
    assert reason in DROP_REASONS


def test_url_rules_are_configurable():
    rules = PairRules.from_config(workflow_from_dict({"extract": {"excluded_extensions": ["PNG"], "max_url_chars": 40}}).extract)
    assert _resolve("/a.gif", rules=rules)[0] == "https://www.example.com/a.gif"
    assert _resolve("/a.png", rules=rules) == (None, "excluded_extension")
    assert _resolve("/" + "b" * 30 + ".jpg", rules=rules) == (None, "url_too_long")


def test_page_url_that_is_not_a_url():
    base = page_base("not a url", None)
    assert base is None
    assert resolve_url("https://ok.example/a.jpg", base, R) == ("https://ok.example/a.jpg", None)
    assert resolve_url("a.jpg", base, R) == (None, "bad_url")


@pytest.mark.parametrize("raw,clean", [
    ("  A   red\tcar\n\n on the  road ", "A red car on the road"),
    ("caf\u00c3\u00a9 au lait", "café au lait"),  # mojibake repaired
    ("Tom &amp; Jerry", "Tom & Jerry"),
    ("bell\x07 and\x00 null\x1f", "bell and null"),
    ("zero\u200bwidth\ufeff", "zerowidth"),
    ("ﬁne ｆｕｌｌwidth “quotes”", "fine fullwidth \"quotes\""),
    ("non\u00a0breaking\u2028line", "non breaking line"),
    ("\u0915\u094d\u200d\u0937", "\u0915\u094d\u200d\u0937"),  # a joiner that a script needs stays
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_truncation_and_huge_text():
    assert clean_text("word " * 1000, max_chars=20) == "word word word word"
    huge = "x" * (50 << 20)
    t0 = time.process_time()
    out = clean_text(huge, max_chars=2000)
    assert out == "x" * 2000
    assert time.process_time() - t0 < 5  # cut before ftfy: 50 MB would take minutes


def test_text_reasons_chars_and_words():
    assert text_reason("abcd", R) == "text_too_short"
    assert text_reason("abcde", R) is None
    words = PairRules(min_text_chars=5, min_words=5)
    assert text_reason("Creative Commons License", words) == "too_few_words"
    assert text_reason("a dog runs on the beach", words) is None
    assert {"text_too_short", "too_few_words"} <= DROP_REASONS


# ---------------------------------------------------------------------------------------------
# `repair` skips ftfy when ftfy would only normalize: it must give exactly ftfy's result.

_ALPHABET = st.sampled_from(
    list("abcXYZ 09.,;!?-'\"&<>#\t\n\r\x00\x07\x1b\x0b\x0c")
    + [chr(c) for c in range(0x80, 0x100)]  # Latin-1 and C1: the stuff of mojibake
    + list("€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ")  # cp1252's specials
    + list("ÃÂâ€™ÐÑРСЃ")  # typical mojibake pieces (UTF-8 read as cp1252 / cp1251)
    + list("абвгдежзийклмнопрстуфхцчшщъыьэюяАБВ")
    + list("日本語の文章中文汉字한국어")
    + list("ﬁﬂＡＢｃ１２　ｶﾀｶﾅ")  # ligatures, fullwidth, halfwidth
    + ["\u200b", "\u200d", "\ufeff", "\u2028", "\u00a0", "e\u0301", "\U0001f600", "\ud800"]
)
_TEXT = st.lists(_ALPHABET, max_size=40).map("".join)


def _mojibake(s: str) -> str:
    return s.encode("utf-8", "surrogatepass").decode("cp1252", errors="ignore")


_ANY = st.one_of(_TEXT, _TEXT.map(_mojibake), st.text(max_size=30))


@pytest.mark.parametrize("s", ["e\u0301\u00c6\u00c6", "caf\u00c3\u00a9", "cafe\u0301 na\u00efve", "\u00c3e\u0301"])
def test_repair_equals_ftfy_on_decomposed_text(s):
    """Mojibake that shows only once the text is NFC (ftfy normalizes, then looks again)."""
    assert repair(s) == ftfy.fix_text(s)


@settings(max_examples=400, deadline=None)
@given(_ANY.filter(lambda s: not any(c in s for c in "\r\u2028\u2029")))
def test_repair_equals_ftfy(s):
    assert repair(s) == ftfy.fix_text(s)


@settings(max_examples=400, deadline=None)
@given(_ANY)
def test_clean_text_same_as_with_ftfy_always(s):
    """Line breaks are left to the whitespace collapse instead of ftfy: same cleaned text."""
    with mock.patch.object(rules, "repair", ftfy.fix_text):
        reference = clean_text(s)
    assert clean_text(s) == reference


@settings(max_examples=200, deadline=None)
@given(st.one_of(_TEXT, st.text(max_size=60)), st.integers(1, 50))
def test_clean_text_invariants(s, max_chars):
    out = clean_text(s, max_chars)
    assert len(out) <= max_chars
    assert out == out.strip() and "  " not in out
    assert not any(c in out for c in "\t\n\r\x00\x07\x1b\x0b\x0c\u200b\ufeff")


# ---------------------------------------------------------------------------------------------
# `is_bad` is skipped for texts without any character its expression needs: never for one it
# would call bad.

from ftfy.badness import MOJIBAKE_CATEGORIES, is_bad  # noqa: E402


def _category_chars() -> list[str]:
    out: set[str] = set()
    for body in MOJIBAKE_CATEGORIES.values():
        i = 0
        while i < len(body):
            if i + 2 < len(body) and body[i + 1] == "-":
                out.update(map(chr, range(ord(body[i]), ord(body[i + 2]) + 1)))
                i += 3
            else:
                out.add(body[i])
                i += 1
    return sorted(out)


_POOL = _category_chars() + list("ÂÃÎÐØÙàŒœ°²³×√±∂†≠®™´≤≥¥µø≈¢‚Äìîïòôúùûπâóäêβ€™Άā вЂГўВ.aZ ,?!")


def test_mojibake_hint_was_derived():
    assert rules._MOJIBAKE_HINT is not None
    assert not rules._MOJIBAKE_HINT.search("日本語の文章 中文汉字 한국어 Привет мир Καλημέρα κόσμε")


def test_mojibake_hint_covers_every_bad_pair():
    hint = rules._MOJIBAKE_HINT
    misses = [a + b for a in _POOL for b in _POOL if is_bad(a + b) and not hint.search(a + b)]
    assert not misses


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.lists(st.sampled_from(_POOL), min_size=1, max_size=6).map("".join), _ANY, st.text(max_size=20)))
def test_mojibake_hint_covers_every_bad_text(s):
    if is_bad(s):
        assert rules._MOJIBAKE_HINT.search(s)
