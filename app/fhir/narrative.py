"""Narrative safety: a resource's ``text.div`` may hold formatting, never active content.

Narratives are shown to people in browsers (EPR viewers, patient apps), so a ``div`` with a
script, a frame, an event attribute or a ``javascript:`` link is stored cross-site scripting. FHIR
R4 says the same (Narrative, invariant txt-1: only the basic HTML formatting elements and
attributes; "SHALL NOT contain a head, a body, external stylesheet references, deprecated
elements, scripts, forms, base/link/xlink, frames, iframes, objects or event related
attributes"). The check tokenises the div with the standard library's HTML parser, the way a
browser would read it, so malformed or nested markup cannot hide a tag from it.

Elements are an allow-list (the formatting elements of HTML 4 chapters 7-11, tables, lists,
``a`` and ``img``); attributes are checked for what makes content active: ``on*`` event
handlers, URLs with a scripting scheme, and CSS that runs code. The validator's walk
(app/fhir/validation.py) calls it for every xhtml element at any depth (contained resources,
Bundle entries), so every way in (REST, transactions, the loader) refuses with 400 ``value``
naming the element path and what was found.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

ALLOWED_ELEMENTS = frozenset(
    """
    a abbr acronym address b bdo big blockquote br caption cite code col colgroup dd del dfn div
    dl dt em h1 h2 h3 h4 h5 h6 hr i img ins kbd li ol p pre q samp small span strong sub sup table
    tbody td tfoot th thead tr tt ul var
    """.split()
)
URL_ATTRIBUTES = frozenset({"href", "src", "cite", "longdesc", "usemap", "background", "action", "formaction",
                           "xlink:href", "data", "codebase", "lowsrc", "dynsrc"})
# Whitespace and control characters browsers ignore inside a URL scheme ("java\tscript:").
_URL_NOISE = re.compile(r"[\x00-\x20\x7f]+")
_SAFE_DATA_URL = re.compile(r"^data:image/(png|gif|jpeg|jpg|webp|bmp);", re.I)
# CSS that runs code or fetches from a scripting scheme (old IE expression(), behaviours, XBL).
_ACTIVE_CSS = re.compile(r"expression\s*\(|javascript:|vbscript:|-moz-binding|behavior\s*:|@import", re.I)
_CSS_COMMENT = re.compile(r"/\*.*?(\*/|$)", re.S)
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})\s?|\\(.)", re.S)


def _css_plain(value: str) -> str:
    """CSS as the browser reads it: comments gone, escapes (``\\72`` is ``r``) decoded."""

    def unescape(m: re.Match) -> str:
        if m.group(1):
            code = int(m.group(1), 16)
            return chr(code) if 0 < code <= 0x10FFFF else ""
        return m.group(2)

    return _CSS_ESCAPE.sub(unescape, _CSS_COMMENT.sub("", value))


def _active_url(value: str) -> bool:
    v = _URL_NOISE.sub("", value).lower()
    if v.startswith(("javascript:", "vbscript:", "livescript:")):
        return True
    return v.startswith("data:") and not _SAFE_DATA_URL.match(v)


class _Scanner(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def _tag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_ELEMENTS:
            self.problems.append(f"element <{tag}> is not allowed in a narrative")
        for name, value in attrs:
            name = name.lower()
            value = value or ""
            if name.startswith("on"):
                self.problems.append(f"event attribute {name} on <{tag}>")
            elif name in URL_ATTRIBUTES and _active_url(value):
                self.problems.append(f"{name} with a scripting or data URL on <{tag}>")
            elif name == "style" and _ACTIVE_CSS.search(_css_plain(value)):
                self.problems.append(f"style with active CSS on <{tag}>")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, attrs)

    def handle_pi(self, data: str) -> None:
        self.problems.append("a processing instruction")

    def handle_decl(self, decl: str) -> None:
        self.problems.append("a markup declaration (<!...>)")

    def unknown_decl(self, data: str) -> None:
        self.problems.append("a markup declaration (<![...]>)")


def div_problems(div: str) -> list[str]:
    """What makes this narrative div active (empty when it is plain formatting)."""
    scanner = _Scanner()
    scanner.feed(div)
    scanner.close()
    seen: list[str] = []
    for p in scanner.problems:
        if p not in seen:
            seen.append(p)
    return seen
