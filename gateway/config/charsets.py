"""Which charsets the gateway decodes text in: the ones mail is written in, and no others.

In config, the lowest layer, because both read it: the config checks `smtp.fallback_charset`
against it at load, and the message parser decodes with it."""

from __future__ import annotations

import codecs

# The charsets a message may declare, as Python codec names. Python knows many more codecs, but
# some of them are no charsets at all ("base64", "rot13", "unicode-escape", "idna") and some
# decode in quadratic time ("punycode": half a megabyte is seconds of CPU), so the sender does
# not get to pick any codec by name: only the ones mail is written in, all of them linear-time C
# decoders. A name outside this list is an unknown charset (UTF-8, else the fallback).
# UTF-32 is left out on purpose: no mail program writes it and its decoder is the slowest here.
MAIL_CHARSETS = frozenset(
    codecs.lookup(name).name
    for name in (
        "utf-8",
        "utf-8-sig",
        "us-ascii",
        "utf-16",
        "utf-16-le",
        "utf-16-be",
        "utf-7",
        *(f"iso-8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)),
        *(f"windows-{n}" for n in range(1250, 1259)),
        "koi8-r",
        "koi8-u",
        "koi8-t",
        "cp866",
        "cp1125",
        "mac-cyrillic",
        "ptcp154",
        "kz1048",
        "cp437",
        "cp850",
        "cp852",
        "cp855",
        "mac-roman",
        "tis-620",
        "cp874",
        "gb2312",
        "gbk",
        "gb18030",
        "hz",
        "big5",
        "big5hkscs",
        "cp950",
        "shift_jis",
        "cp932",
        "euc-jp",
        "iso-2022-jp",
        "iso-2022-jp-2",
        "euc-kr",
        "cp949",
        "iso-2022-kr",
        "johab",
    )
)
# IANA's longest charset names are about 45 characters; a longer one is nobody's charset.
_MAX_NAME = 64


def mail_codec(name: str | None) -> str | None:
    """The Python codec for a charset name, if it is one of MAIL_CHARSETS; else None."""
    if not name or len(name) > _MAX_NAME:
        return None
    try:
        info = codecs.lookup(name.strip())
    except Exception:  # LookupError, but also ValueError/TypeError for names with NULs etc.
        return None
    return info.name if info.name in MAIL_CHARSETS else None
