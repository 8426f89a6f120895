"""Reading the mail data after DATA: in stretches up to each ".<CRLF>", not line by line.

aiosmtpd reads the data one line at a time (a `readuntil`, two joins and a list append per line),
which for a 1 KB message of 25 lines is a good part of what a session costs. The data ends at the
first <CRLF>.<CRLF> (the <CRLF> that ended the DATA command counts, so a lone "." line first
ends an empty message), and a "." can only end a line just before a <CRLF>: reading up to each
".<CRLF>" and looking at what came before it finds exactly the end that aiosmtpd finds, bare
<LF> and bare <CR> included (neither ends a line, which is what closes SMTP smuggling), in one or
a few reads.

The rules are aiosmtpd's: the data counts as sent, dots and line ends included, before the
terminating ".<CRLF>"; more than the size limit, or a stretch longer than the reader's limit,
is read to its end and refused (both of aiosmtpd's refusals mean "too big" here: the reader's
limit is never below the size limit); a leading dot is taken off every line (RFC 5321 4.5.2).
Checked against aiosmtpd's own loop, generated input included, in tests/smtp/test_data_phase.py;
the session (gateway.smtp.session) calls it from its smtp_DATA.
"""

from __future__ import annotations

import asyncio

_DOT_LINE = b".\r\n"
_END = b"\r\n.\r\n"


class TooBig(Exception):
    """The data was read to its end and is over the size limit (or the reader's line limit)."""


async def read_data(reader: asyncio.StreamReader, size_limit: int) -> bytes:
    """The message between DATA's 354 and the lone ".", with the dot-stuffing undone.

    The reader's limit must not be below `size_limit` (see the module docstring); raises TooBig
    after consuming the whole data when it is over either."""
    parts: list[bytes] = []
    size = 0
    too_big = False
    tail = b"\r\n"  # the last two bytes read: the DATA command ended with them
    while True:
        try:
            chunk = await reader.readuntil(_DOT_LINE)
        except asyncio.LimitOverrunError as exc:
            # More than the reader's limit without a ".<CRLF>": too big. `consumed` stops
            # short of any ".<CRLF>" (and of a partial one at the end), so the end is not lost.
            chunk = await reader.read(exc.consumed)
            too_big = True
            parts.clear()
            tail = (tail + chunk)[-2:]
            continue
        ended = (tail + chunk)[-5:] == _END
        if ended:
            chunk = chunk[:-3]
        size += len(chunk)
        if size > size_limit and not too_big:
            too_big = True
            parts.clear()
        if not too_big:
            parts.append(chunk)
        if ended:
            break
        tail = b"\r\n"  # every stretch ends with ".<CRLF>"
    if too_big:
        raise TooBig
    data = b"".join(parts)
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")
