"""Delivery status notifications (RFC 3464) to the envelope sender, through a relay.

A delivery that finally failed is marked `bounce = 'pending'` in the same transaction that
records the failure, so a crash cannot lose the notification; this loop sends what is pending
and marks it sent. Null senders are never marked, so bounces never answer bounces.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import smtplib
from collections.abc import Callable
from dataclasses import replace
from email.header import Header
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.policy import SMTPUTF8 as SMTPUTF8_POLICY

from gateway.config.model import Config
from gateway.message.parse import decode_bytes
from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import PendingBounce
from gateway.spool.states import BounceState, State
from gateway.status.metrics import Metrics

log = logging.getLogger("smtp2pulse.bounce")

RELAY_RETRY_SECONDS = 60.0
PENDING_AT_ONCE = 50


class Undeliverable(Exception):
    """This notification can never be sent as it is: recorded as failed, the next one goes on."""


def build_dsn(
    failure: PendingBounce, headers: bytes, reporting_host: str, sender: str
) -> EmailMessage:
    """A multipart/report: human text, message/delivery-status, the original headers (the
    7-bit header block _header_block cut from failure.raw)."""
    report = EmailMessage()
    report["From"] = sender or f"MAILER-DAEMON@{reporting_host}"
    report["To"] = failure.mail_from
    report["Subject"] = f"Undelivered message: {failure.recipient}"
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=reporting_host)
    report["Auto-Submitted"] = "auto-replied"
    report.set_content(
        f"This is the smtp2pulse gateway at {reporting_host}.\n\n"
        f"Your message {failure.queue_id} could not be delivered to {failure.recipient}:\n\n"
        f"    {failure.reason}\n\nNo further attempts will be made.\n"
    )
    report.make_mixed()
    report.replace_header("Content-Type", "multipart/report; report-type=delivery-status")
    report.attach(_delivery_status(failure, reporting_host))
    original = EmailMessage()
    original.set_type("text/rfc822-headers")
    # _header_block made it 7-bit: raw 8-bit values are already RFC 2047 words.
    original.set_payload(headers.decode("ascii", "replace"))
    report.attach(original)
    return report


def _seven_bit(text: str) -> str:
    """A DSN field as ASCII: RFC 2047 words when the text is not (a platform's Russian error)."""
    return text if text.isascii() else Header(text, "utf-8").encode()


def _delivery_status(failure: PendingBounce, reporting_host: str) -> EmailMessage:
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_host}"
    per_message["X-Queue-ID"] = _seven_bit(failure.queue_id)
    per_message["Arrival-Date"] = email.utils.formatdate(failure.received_at, localtime=True)
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {_seven_bit(failure.recipient)}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = "5.4.7" if failure.state == State.FAILED else "5.0.0"
    per_recipient["Diagnostic-Code"] = f"X-Pulse; {_seven_bit(' '.join(failure.reason.split()))}"
    status = EmailMessage()
    status.set_type("message/delivery-status")
    status.set_payload([per_message, per_recipient])
    del status["MIME-Version"]
    return status


class Bouncer:
    def __init__(
        self, spool: SpoolInterface, config: Callable[[], Config], metrics: Metrics
    ) -> None:
        self.spool = spool
        self.config = config
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._wake.set()  # whatever a previous run left pending
        self._task = asyncio.create_task(self._run(), name="bouncer")

    def wake(self) -> None:
        self._wake.set()

    async def mark_failed_status(self, delivery_id: int) -> None:
        """A callback said a sent message failed after all."""
        if not self.config().bounces.enabled:
            return
        if await self.spool.mark_bounce(delivery_id):
            self.wake()

    async def stop(self) -> None:
        """Never raises: the daemon still drains and closes the spool after a bouncer's bug."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.error("bouncer had stopped on an error: %s: %s", type(exc).__name__, exc)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                fallback = self.config().smtp.fallback_charset
                pending = await self.spool.pending_bounces(PENDING_AT_ONCE)
                # The original's headers are read off the loop: a raw mail may be megabytes.
                failures = await asyncio.to_thread(_failures, pending, fallback)
            except Exception as exc:  # a spool that is briefly unwritable: try again later
                log.error(
                    "bounces: cannot read the pending ones (%s); retrying in %.0fs",
                    exc,
                    RELAY_RETRY_SECONDS,
                )
                failures = None
            if failures is None:
                await asyncio.sleep(RELAY_RETRY_SECONDS)
                self._wake.set()
                continue
            for failure, headers in failures:
                if not await self._send(failure, headers):
                    await asyncio.sleep(RELAY_RETRY_SECONDS)
                    self._wake.set()
                    break

    async def _send(self, failure: PendingBounce, headers: bytes) -> bool:
        """True when this one is settled (sent or recorded as failed); False: relay trouble."""
        try:
            return await self._attempt(failure, headers)
        except Exception as exc:
            # One notification that cannot be built or sent must not hold up the ones after it.
            reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            log.error(
                "queue_id=%s bounce to <%s> failed: %s",
                failure.queue_id,
                failure.mail_from,
                reason,
                extra={"queue_id": failure.queue_id},
            )
            self.metrics.bounces.labels("failed").inc()
            try:
                await self.spool.settle_bounce(failure.delivery_id, BounceState.FAILED, reason)
            except Exception as spool_exc:
                log.error(
                    "queue_id=%s could not record the failed bounce: %s",
                    failure.queue_id,
                    spool_exc,
                    extra={"queue_id": failure.queue_id},
                )
                return False
            return True

    async def _attempt(self, failure: PendingBounce, headers: bytes) -> bool:
        config = self.config()
        message = build_dsn(failure, headers, config.smtp.hostname, config.bounces.sender)
        relay = config.bounces.relay
        utf8 = not failure.mail_from.isascii()
        # An 8-bit address goes out raw, as RFC 6531 has it; only a relay offering SMTPUTF8
        # takes it (checked in _relay).
        data = message.as_bytes(policy=SMTPUTF8_POLICY if utf8 else SMTP_POLICY)
        try:
            await asyncio.to_thread(
                _relay,
                relay.host,
                relay.port,
                config.bounces.timeout,
                failure.mail_from,
                data,
                utf8,
            )
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code < 500:
                log.warning(
                    "queue_id=%s bounce to <%s> deferred: %s",
                    failure.queue_id,
                    failure.mail_from,
                    exc,
                    extra={"queue_id": failure.queue_id},
                )
                return False
            await self.spool.settle_bounce(failure.delivery_id, BounceState.FAILED)
            self.metrics.bounces.labels("refused").inc()
            log.warning(
                "queue_id=%s bounce to <%s> refused by the relay: %s",
                failure.queue_id,
                failure.mail_from,
                exc,
                extra={"queue_id": failure.queue_id},
            )
            return True
        except (OSError, smtplib.SMTPException) as exc:
            log.warning(
                "bounce relay %s unreachable (%s); retrying in %.0fs",
                relay,
                exc,
                RELAY_RETRY_SECONDS,
            )
            return False
        await self.spool.settle_bounce(failure.delivery_id, BounceState.SENT)
        self.metrics.bounces.labels("sent").inc()
        log.info(
            "queue_id=%s bounce sent to <%s> for %s",
            failure.queue_id,
            failure.mail_from,
            failure.recipient,
            extra={"queue_id": failure.queue_id},
        )
        return True


def _relay(host: str, port: int, timeout: float, to: str, data: bytes, utf8: bool) -> None:
    with smtplib.SMTP(host, port, timeout=timeout) as client:
        options: list[str] = []
        if utf8:
            client.ehlo_or_helo_if_needed()
            if not client.has_extn("smtputf8"):
                raise Undeliverable(f"the relay does not offer SMTPUTF8 for <{to}>")
            options.append("SMTPUTF8")
        try:
            client.sendmail("", [to], data, mail_options=options)  # null return path
        except smtplib.SMTPRecipientsRefused as exc:
            # Its one recipient refused: a reply like any other (5xx final, 4xx later).
            code, text = next(iter(exc.recipients.values()))
            raise smtplib.SMTPResponseException(code, text) from None


def _failures(
    pending: list[PendingBounce], fallback_charset: str = "cp1251"
) -> list[tuple[PendingBounce, bytes]]:
    """Each pending bounce with the reason the DSN gives, and the original's header block."""
    return [
        (
            p
            if p.state != State.SENT
            else replace(p, reason=f"the platform reported status {p.reason}"),
            _header_block(p.raw, fallback_charset),
        )
        for p in pending
    ]


def _header_block(raw: bytes, fallback_charset: str = "cp1251") -> bytes:
    """The original's header lines, 7-bit: an 8-bit value decoded the way the parser reads it
    (UTF-8, else the fallback charset: a 1C Subject in raw CP1251), then RFC 2047-quoted."""
    headers = BytesHeaderParser().parsebytes(raw)
    lines = []
    for name, value in headers.raw_items():
        if not value.isascii():
            # The parser kept the undecodable bytes as surrogate escapes; get them back.
            data = value.encode("utf-8", "surrogateescape")
            text = " ".join(decode_bytes(data, None, fallback_charset).split())
            lines.append(_quoted(name, text))
        else:
            lines.append(f"{name}: {value}\n")
    return "".join(lines).encode("ascii", "replace")


_ADDRESS_HEADERS = frozenset(("from", "to", "cc", "bcc", "reply-to", "sender"))
_MAX_STRUCTURED = 998  # the email package's address parser is not linear in what it is given


def _quoted(name: str, text: str) -> str:
    """One header line in RFC 2047: an address header word by word (its addr-spec stays
    readable), anything else as unstructured text."""
    if name.lower() in _ADDRESS_HEADERS and len(text) <= _MAX_STRUCTURED:
        with contextlib.suppress(Exception):
            folded = str(SMTP_POLICY.header_factory(name, text).fold(policy=SMTP_POLICY))
            if folded.isascii():
                return folded.replace("\r\n", "\n")
    return f"{name}: {Header(text, 'utf-8', header_name=name).encode()}\n"
