"""What `smtp2pulse queue` shows and changes.

These run beside a live daemon: the spool reads on connections of their own while the daemon
writes, so a long listing does not hold up an accept, and a retry is picked up by the daemon's
worker on its next look.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gateway.spool.interface import SpoolInterface
from gateway.spool.rows import DeliveryDetail, MessageDetail, MessageSummary

__all__ = ["DeliveryDetail", "MessageDetail", "MessageSummary", "as_jsonable", "drop_message",
           "list_messages", "retry_message", "show_message"]


async def list_messages(spool: SpoolInterface, *, include_finished: bool = False,
                        limit: int = 1000) -> list[MessageSummary]:
    return await spool.list_messages(include_finished=include_finished, limit=limit)


async def show_message(spool: SpoolInterface, queue_id: str) -> MessageDetail | None:
    return await spool.show_message(queue_id)


async def retry_message(spool: SpoolInterface, queue_id: str) -> int | None:
    """Make every unfinished or failed delivery of a message due now; None if no such message."""
    return await spool.retry_message(queue_id)


async def drop_message(spool: SpoolInterface, queue_id: str) -> bool:
    return await spool.drop_message(queue_id)


def as_jsonable(detail: MessageDetail) -> dict[str, Any]:
    return asdict(detail)
