"""HTML to readable plain text, for mail that has no text/plain part.

Never raises, and stays linear on hostile input (html.parser itself is quadratic on some).
"""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser

from gateway.message.text import clean_text

_BLANK_LINES = re.compile(r"\n{3,}")

# --- HTML ------------------------------------------------------------------------------------

# Line breaks around block elements: 2 leaves a blank line, 1 starts a new line.
_BLOCKS = {
    **dict.fromkeys(("p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr"), 2),
    **dict.fromkeys(
        (
            "div",
            "li",
            "tr",
            "table",
            "ul",
            "ol",
            "section",
            "article",
            "header",
            "footer",
            "main",
            "nav",
            "aside",
            "dl",
            "dt",
            "dd",
            "center",
        ),
        1,
    ),
}
_HIDDEN = frozenset(("head", "title", "script", "style", "template"))
_HEAD_ONLY = frozenset(("meta", "link", "base", "title", "style", "script", "noscript"))
_MAX_INDENT = 4  # nesting levels of lists shown by indentation
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")
_TAG = re.compile(r"<[^<>]*>")
_LONE_LT = re.compile(r"<(?=[^<>]*(?:<|\Z))")


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML document; never raises."""
    extractor = _TextExtractor()
    try:
        extractor.feed(_defuse(html))
        extractor.close()
        text = extractor.text()
    except Exception:
        # html.parser still raises on some malformed declarations ("<![foo"): strip tags crudely.
        text = " ".join(unescape(_TAG.sub(" ", html)).split())
    return _BLANK_LINES.sub("\n\n", clean_text(text))


def _defuse(html: str) -> str:
    """Escape each "<" that cannot begin a complete tag (no ">" before the next "<").

    For every such "<", html.parser rescans the rest of the document: "<a <a <a ..." of a few
    hundred kilobytes takes hours. It would show these as text anyway. Comments are kept
    whole, since they may hold tags.
    """
    pieces: list[str] = []
    pos = 0
    while (start := html.find("<!--", pos)) >= 0 and (end := html.find("-->", start + 4)) >= 0:
        pieces += (_LONE_LT.sub("&lt;", html[pos:start]), html[start : end + 3])
        pos = end + 3
    pieces.append(_LONE_LT.sub("&lt;", html[pos:]))
    return "".join(pieces)


def _is_web_link(href: str) -> bool:
    return href.lower().startswith(("http://", "https://"))


def _same_link(label: str, href: str) -> bool:
    def bare(url: str) -> str:
        url = url.strip().lower()
        for prefix in ("https://", "http://", "www."):
            url = url.removeprefix(prefix)
        return url.rstrip("/")

    return bare(label) == bare(href)


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._breaks = 0  # line breaks owed before the next text
        self._line_start = True
        self._bullet = ""  # a list item's "- ", written with its first text
        self._hidden: list[str] = []
        self._pre = 0
        self._lists = 0
        self._link: tuple[str, int] | None = None  # href and where its text starts

    def text(self) -> str:
        self._close_link()
        return "".join(self._out)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # A <head> or <title> left open ends where body content begins, as in browsers.
        if tag == "body" or (self._hidden == ["head"] and tag not in _HEAD_ONLY):
            self._hidden.clear()
        if tag in _HIDDEN and tag not in self._hidden:
            self._hidden.append(tag)
        if self._hidden:
            return
        if tag == "br":
            self._breaks += 1
        self._block(tag, opening=True)
        if tag == "pre":
            self._pre += 1
        elif tag in ("ul", "ol"):
            self._lists += 1
        elif tag == "li":
            self._bullet = "  " * min(max(self._lists - 1, 0), _MAX_INDENT) + "- "
        elif tag in ("td", "th"):
            self._space()
        elif tag == "a":
            self._close_link()  # links do not nest: a new one ends the last, as in browsers
            href = next((value for name, value in attrs if name == "href"), None) or ""
            self._link = (href.strip(), len(self._out))

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            if tag in self._hidden:
                del self._hidden[self._hidden.index(tag) :]
            return
        if self._hidden:
            return
        if tag == "pre":
            self._pre = max(self._pre - 1, 0)
        elif tag in ("ul", "ol"):
            self._lists = max(self._lists - 1, 0)
        elif tag == "a":
            self._close_link()
        self._block(tag, opening=False)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        text = data.replace("\xa0", " ")
        self._write(text if self._pre else _HTML_SPACE.sub(" ", text))

    def _close_link(self) -> None:
        if self._link is None:
            return
        href, start = self._link
        self._link = None
        if not _is_web_link(href):
            return
        label = " ".join("".join(self._out[start:]).split())
        if not label:
            self._write(href)
        elif not _same_link(label, href):
            self._write(f" ({href})")

    def _block(self, tag: str, *, opening: bool) -> None:
        # "<li><p>item</p></li>" should not leave the bullet alone on its line.
        if tag in _BLOCKS and not (opening and self._bullet and tag != "li"):
            self._breaks = max(self._breaks, _BLOCKS[tag])

    def _space(self) -> None:
        if not self._line_start and not self._breaks and not self._out[-1].endswith(" "):
            self._out.append(" ")

    def _write(self, text: str) -> None:
        starting = self._line_start or self._breaks > 0
        if not self._pre and (starting or self._out[-1].endswith(" ")):
            text = text.lstrip(" ")
        if not text:
            return
        if self._breaks and self._out:
            self._out.append("\n" * self._breaks)
        self._out.append(self._bullet + text)
        self._breaks, self._bullet = 0, ""
        self._line_start = text.endswith("\n")
