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
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY

from gateway.config import Config
from gateway.metrics import Metrics
from gateway.spool import Spool, mark_bounce

log = logging.getLogger("smtp2pulse.bounce")

RELAY_RETRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Failure:
    delivery_id: int
    queue_id: str
    mail_from: str
    recipient: str
    received_at: float
    state: str            # refused | failed | sent (a failed status by callback)
    reason: str
    headers: bytes


def build_dsn(failure: Failure, reporting_host: str, sender: str) -> EmailMessage:
    """A multipart/report: human text, message/delivery-status, the original headers."""
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
        f"    {failure.reason}\n\nNo further attempts will be made.\n")
    report.make_mixed()
    report.replace_header("Content-Type", "multipart/report; report-type=delivery-status")
    report.attach(_delivery_status(failure, reporting_host))
    original = EmailMessage()
    original.set_type("text/rfc822-headers")
    original.set_payload(failure.headers.decode("ascii", "replace"))
    report.attach(original)
    return report


def _delivery_status(failure: Failure, reporting_host: str) -> EmailMessage:
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_host}"
    per_message["X-Queue-ID"] = failure.queue_id
    per_message["Arrival-Date"] = email.utils.formatdate(failure.received_at, localtime=True)
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {failure.recipient}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = "5.4.7" if failure.state == "failed" else "5.0.0"
    per_recipient["Diagnostic-Code"] = f"X-Pulse; {' '.join(failure.reason.split())}"
    status = EmailMessage()
    status.set_type("message/delivery-status")
    status.set_payload([per_message, per_recipient])
    del status["MIME-Version"]
    return status


class Bouncer:
    def __init__(self, spool: Spool, config: Callable[[], Config], metrics: Metrics) -> None:
        self.spool = spool
        self.config = config
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._wake.set()   # whatever a previous run left pending
        self._task = asyncio.create_task(self._run(), name="bouncer")

    def wake(self) -> None:
        self._wake.set()

    async def mark_failed_status(self, delivery_id: int) -> None:
        """A callback said a sent message failed after all."""
        if not self.config().bounces.enabled:
            return
        if await self.spool.run(lambda conn: mark_bounce(conn, delivery_id)):
            self.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for failure in await self.spool.run(_pending):
                if not await self._send(failure):
                    await asyncio.sleep(RELAY_RETRY_SECONDS)
                    self._wake.set()
                    break

    async def _send(self, failure: Failure) -> bool:
        config = self.config()
        message = build_dsn(failure, config.smtp.hostname, config.bounces.sender)
        relay = config.bounces.relay
        try:
            await asyncio.to_thread(_relay, relay.host, relay.port, config.bounces.timeout,
                                    failure.mail_from, message.as_bytes(policy=SMTP_POLICY))
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code < 500:
                log.warning("queue_id=%s bounce to <%s> deferred: %s", failure.queue_id,
                            failure.mail_from, exc, extra={"queue_id": failure.queue_id})
                return False
            await self.spool.run(lambda conn: _settle(conn, failure.delivery_id, "failed"))
            self.metrics.bounces.labels("refused").inc()
            log.warning("queue_id=%s bounce to <%s> refused by the relay: %s",
                        failure.queue_id, failure.mail_from, exc,
                        extra={"queue_id": failure.queue_id})
            return True
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("bounce relay %s unreachable (%s); retrying in %.0fs", relay, exc,
                        RELAY_RETRY_SECONDS)
            return False
        await self.spool.run(lambda conn: _settle(conn, failure.delivery_id, "sent"))
        self.metrics.bounces.labels("sent").inc()
        log.info("queue_id=%s bounce sent to <%s> for %s", failure.queue_id, failure.mail_from,
                 failure.recipient, extra={"queue_id": failure.queue_id})
        return True


def _relay(host: str, port: int, timeout: float, to: str, data: bytes) -> None:
    with smtplib.SMTP(host, port, timeout=timeout) as client:
        client.sendmail("", [to], data)   # null return path: nobody bounces a bounce


def _pending(conn: sqlite3.Connection) -> list[Failure]:
    rows = conn.execute(
        "SELECT d.id, m.id, m.mail_from, d.recipient, m.received_at, d.state,"
        " coalesce(d.last_error, d.status, ''), m.raw FROM deliveries d JOIN messages m"
        " ON m.id = d.message_id WHERE d.bounce = 'pending' ORDER BY d.id LIMIT 50").fetchall()
    return [Failure(row[0], row[1], row[2], row[3], row[4], row[5],
                    row[6] if row[5] != "sent" else f"the platform reported status {row[6]}",
                    _header_block(row[7])) for row in rows]


def _header_block(raw: bytes) -> bytes:
    headers = BytesHeaderParser().parsebytes(raw)
    return b"".join(f"{name}: {value}\n".encode("utf-8", "replace")
                    for name, value in headers.items())


def _settle(conn: sqlite3.Connection, delivery_id: int, state: str) -> None:
    conn.execute("UPDATE deliveries SET bounce = ? WHERE id = ?", (state, delivery_id))
    conn.execute("INSERT INTO events (delivery_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                 (delivery_id, time.time(), f"bounce {state}", ""))
