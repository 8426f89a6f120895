"""What an SMS text costs: its encoding and how many parts it is sent as, and cutting it to fit.

GSM 03.38: a text of GSM-7 characters only (the extension table's characters take two septets,
an escape and the character) is one part up to 160 septets, otherwise parts of 153; any other
character makes the whole text UCS-2, one part up to 70 UTF-16 units, otherwise parts of 67 (a
character outside the BMP takes two units). In a long message neither an escape pair nor a
surrogate pair is split between parts, so parts are packed the way a phone or an SMSC packs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
GSM7 = GSM7_BASIC | GSM7_EXTENSION
ELLIPSIS = "…"
# How far back from the cut a space is looked for: a word boundary is "near" within this many
# characters; further back, the word is cut instead of losing a good part of a part.
_NEAR = 20


@dataclass(frozen=True, slots=True)
class Segments:
    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    parts: int


def is_gsm7(text: str) -> bool:
    return GSM7.issuperset(text)


def segments(text: str) -> Segments:
    """The encoding of `text` and the number of parts it is sent as (an empty text is 1)."""
    # Counted with str methods, not a loop over characters: a text may be a whole mail, and it
    # is counted for every recipient and again when it is sent.
    if is_gsm7(text):
        doubles = sum(text.count(char) for char in GSM7_EXTENSION)
        return _segments("GSM-7", text, doubles, GSM7_EXTENSION.__contains__, 160, 153)
    doubles = len(text.encode("utf-16-le", "surrogatepass")) // 2 - len(text)
    return _segments("UCS-2", text, doubles, _outside_bmp, 70, 67)


def _outside_bmp(char: str) -> bool:
    return ord(char) > 0xFFFF


def _segments(
    encoding: str, text: str, doubles: int, double: Callable[[str], bool], single: int, each: int
) -> Segments:
    units = len(text) + doubles
    if units <= single:
        return Segments(encoding, units, 1)
    if not doubles:
        return Segments(encoding, units, -(-units // each))
    parts, room = 1, each
    for char in text:
        size = 2 if double(char) else 1
        if size > room:  # a pair is never split: it starts the next part
            parts, room = parts + 1, each
        room -= size
    return Segments(encoding, units, parts)


def fit(text: str, max_parts: int, ellipsis: str = ELLIPSIS) -> str:
    """`text`, or, when it needs more than `max_parts` parts, the longest cut of it that fits
    with `ellipsis` at its end, at a word boundary when one is near the cut."""
    if segments(text).parts <= max_parts:
        return text
    # No text of more characters than this fits in max_parts parts of either encoding.
    low, high = 0, min(len(text), max_parts * 160)
    while low < high:  # the longest prefix that fits: fits() grows monotonically
        middle = (low + high + 1) // 2
        if _fits(text[:middle], max_parts, ellipsis):
            low = middle
        else:
            high = middle - 1
    cut = text[:low]
    if low < len(text) and not text[low].isspace():
        space = max(cut.rfind(" "), cut.rfind("\n"))
        if space > 0 and low - space <= _NEAR and cut[:space].strip():
            cut = cut[:space]
    return cut.rstrip() + ellipsis


def _fits(prefix: str, max_parts: int, ellipsis: str) -> bool:
    return segments(prefix.rstrip() + ellipsis).parts <= max_parts
