"""gateway.logs: the event loop's lines go out once per loop turn, in order, and none is lost."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.logs import PlainFormatter, TurnBufferedHandler


class Recording(io.StringIO):
    """A stream that remembers each write, as a pipe to journald sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, Recording]]:
    stream = Recording()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.logs")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.handlers = [handler]
    yield log, stream
    log.handlers = []
    log.propagate = True


async def test_one_turns_lines_are_one_write_after_the_turn(
    logger: tuple[logging.Logger, Recording],
) -> None:
    log, stream = logger
    for number in range(3):
        log.info("accepted %d", number)
    assert stream.writes == []
    await asyncio.sleep(0)
    assert stream.writes == ["INFO accepted 0\nINFO accepted 1\nINFO accepted 2\n"]
    log.info("next turn")
    await asyncio.sleep(0)
    assert stream.writes[1:] == ["INFO next turn\n"]


async def test_a_warning_goes_at_once_after_what_is_pending(
    logger: tuple[logging.Logger, Recording],
) -> None:
    log, stream = logger
    log.info("first")
    log.warning("second")
    assert stream.getvalue() == "INFO first\nWARNING second\n"
    await asyncio.sleep(0)
    assert stream.getvalue() == "INFO first\nWARNING second\n"


async def test_another_threads_line_is_written_at_once_and_in_order(
    logger: tuple[logging.Logger, Recording],
) -> None:
    log, stream = logger
    log.info("loop")
    thread = threading.Thread(target=log.info, args=("thread",))
    thread.start()
    thread.join()
    assert stream.getvalue() == "INFO loop\nINFO thread\n"


def test_outside_a_loop_lines_are_written_at_once(logger: tuple[logging.Logger, Recording]) -> None:
    log, stream = logger
    log.info("no loop")
    assert stream.writes == ["INFO no loop\n"]


async def test_flush_writes_what_is_pending(logger: tuple[logging.Logger, Recording]) -> None:
    """What logging.shutdown does at exit, when the loop ended before its next turn."""
    log, stream = logger
    log.info("last words")
    log.handlers[0].flush()
    assert stream.getvalue() == "INFO last words\n"
    await asyncio.sleep(0)
    assert stream.getvalue() == "INFO last words\n"


def test_a_loop_that_stopped_before_its_turn_leaves_its_lines_to_the_next(
    logger: tuple[logging.Logger, Recording],
) -> None:
    log, stream = logger
    first = asyncio.new_event_loop()

    def log_and_stop() -> None:
        log.info("stranded")
        first.stop()  # the turn that would write it never comes

    first.call_soon(log_and_stop)
    first.run_forever()
    first.close()
    assert stream.writes == []

    async def later() -> None:
        log.info("next loop")
        await asyncio.sleep(0)

    asyncio.run(later())
    assert stream.writes == ["INFO stranded\nINFO next loop\n"]


def test_a_plain_lines_stamp_names_its_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # A log line's time beside a quiet-hours note's Moscow time: each says which zone it is.
    monkeypatch.setenv("TZ", "Europe/Moscow")
    time.tzset()
    try:
        stream = io.StringIO()
        handler = TurnBufferedHandler(stream)
        handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(message)s"))
        record = logging.makeLogRecord(
            {"msg": "ready", "levelname": "INFO", "levelno": logging.INFO, "created": 1796000000.25}
        )
        handler.emit(record)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert stream.getvalue() == "2026-11-30 03:53:20.250 +0300 INFO ready\n"
