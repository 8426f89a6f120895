"""Cyrillic to Latin, and stand-ins for typographic characters, so that a text stays GSM-7.

The Cyrillic table is ICAO Doc 9303 (7th edition, part 3, as in Russian passports since 2013):
its output is plain A-Z, which GSM-7 has, where GOST 7.79 B needs the backtick and ISO 9 needs
diacritics that GSM-7 does not have. A capital becomes "Zh" before a small letter and "ZH" in a
word in capitals. Any other character outside GSM-7 is given a stand-in (quotes, dashes, the
ellipsis, spaces) or loses its accent when the bare letter is GSM-7 (ç → c); when the text still
is not GSM-7 after that (Chinese, emoji), it is sent as it was: a half-transliterated text would
cost as much and read worse.
"""

from __future__ import annotations

import unicodedata

from gateway.message.sms import GSM7, is_gsm7

_ICAO = {
    "а": "a",
    "б": "b",
    "в": "v",
    "г": "g",
    "д": "d",
    "е": "e",
    "ё": "e",
    "ж": "zh",
    "з": "z",
    "и": "i",
    "й": "i",
    "к": "k",
    "л": "l",
    "м": "m",
    "н": "n",
    "о": "o",
    "п": "p",
    "р": "r",
    "с": "s",
    "т": "t",
    "у": "u",
    "ф": "f",
    "х": "kh",
    "ц": "ts",
    "ч": "ch",
    "ш": "sh",
    "щ": "shch",
    "ъ": "ie",
    "ы": "y",
    "ь": "",
    "э": "e",
    "ю": "iu",
    "я": "ia",
    # The rest of ICAO's table: Ukrainian, Belarusian, Serbian, Macedonian letters.
    "ґ": "g",
    "є": "ie",
    "і": "i",
    "ї": "i",
    "ў": "u",
    "ђ": "d",
    "ѓ": "g",
    "ѕ": "dz",
    "ј": "j",
    "љ": "lj",
    "њ": "nj",
    "ћ": "c",
    "ќ": "k",
    "џ": "dz",
}
_STAND_INS = {
    "‘": "'",
    "’": "'",
    "‚": "'",
    "‛": "'",
    "′": "'",
    "`": "'",
    "´": "'",
    "“": '"',
    "”": '"',
    "„": '"',
    "‟": '"',
    "″": '"',
    "«": '"',
    "»": '"',
    "‐": "-",
    "‑": "-",
    "‒": "-",
    "–": "-",
    "—": "-",
    "―": "-",
    "−": "-",
    "…": "...",
    "•": "*",
    "·": ".",
    "№": "No",
    "₽": "RUB",
    "©": "(c)",
    "®": "(R)",
    "™": "TM",
    "\t": " ",
    "\u00a0": " ",
    "\u2007": " ",
    "\u2009": " ",
    "\u202f": " ",
    "\u200a": " ",
    "\u00ad": "",
    "\u200b": "",
    "\u200c": "",
    "\u200d": "",
    "\u2060": "",
    "\ufeff": "",
}


def transliterate(text: str) -> str:
    """`text` in GSM-7 characters, or `text` unchanged when it cannot be made GSM-7."""
    if is_gsm7(text):
        return text
    out: list[str] = []
    for index, char in enumerate(text):
        if char in GSM7:
            out.append(char)
            continue
        lower = char.lower()
        latin = _ICAO.get(lower)
        if latin is None:
            latin = _STAND_INS.get(char)
        if latin is None:
            latin = _bare(char)
        elif lower != char and latin:
            latin = latin.upper() if _in_capitals(text, index) else latin.capitalize()
        out.append(latin)
    result = "".join(out)
    return result if is_gsm7(result) else text


def _in_capitals(text: str, index: int) -> bool:
    """Whether the capital at `index` is in a word written in capitals (ЩИ), not a name (Щи)."""
    after = text[index + 1 : index + 2]
    before = text[index - 1 : index] if index else ""
    if after.isalpha():
        return after.isupper()
    return before.isalpha() and before.isupper()


def _bare(char: str) -> str:
    """The character without its accents when that is GSM-7 (ç → c, ﬁ → fi); else itself."""
    bare = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return bare if bare and is_gsm7(bare) else char
