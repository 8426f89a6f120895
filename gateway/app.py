"""Composition and lifecycle: start in data-path order, stop in reverse with a bounded drain.

Start: lock the spool, open it (taking back leases a crash left), start the sender and the
worker, and bind the SMTP listeners last, so nothing is accepted before it can be stored.
Stop: close the listeners and say 421 to sessions, let in-flight sends finish (bounded), close
the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from gateway import privacy
from gateway.component import Component
from gateway.config import restart_only
from gateway.config.loader import load_config
from gateway.config.model import Config
from gateway.delivery.bounce import Bouncer
from gateway.delivery.dry_run import DryRunClient
from gateway.delivery.sender_process import SenderProcess
from gateway.delivery.worker import Sender, Worker
from gateway.errors import ConfigError, SpoolError, SpoolLocked
from gateway.logs import setup_logging
from gateway.sdnotify import Notifier
from gateway.smtp.server import SmtpFront
from gateway.spool import meta
from gateway.spool.backends import make_spool
from gateway.spool.interface import SpoolInterface
from gateway.status.metrics import Metrics

if TYPE_CHECKING:
    from gateway.status.server import StatusServer

log = logging.getLogger("smtp2pulse")


class SenderComponent(Sender, Component, Protocol):
    """The sender as the Gateway holds it: the worker sends through it, the Gateway runs it."""


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        sender: SenderComponent | None = None,
        notifier: Notifier | None = None,
        verbose: bool = False,
    ) -> None:
        self._config = config
        self.metrics = Metrics()
        self.notifier = notifier or Notifier()
        self.spool: SpoolInterface = make_spool(config.spool, wake=lambda: self.worker.wake())
        self.sender = sender or _make_sender(
            config,
            mask_personal=lambda: self._config.log_mask_personal,
            log_level="debug" if verbose else config.log_level,
        )
        self.bouncer = Bouncer(self.spool, lambda: self._config, self.metrics)
        self.worker = Worker(
            self.spool,
            self.sender,
            lambda: self._config,
            metrics=self.metrics,
            on_bounce=self.bouncer.wake,
        )
        self.smtp = SmtpFront(
            lambda: self._config, self.spool, self.worker.wake, metrics=self.metrics
        )
        self.status: StatusServer | None = None
        if config.http is not None:
            # Imported only when configured, since the http section is optional: with the
            # sender in its own process, aiohttp's server is a good part of the daemon's memory.
            from gateway.status.server import StatusServer

            self.status = StatusServer(
                config.http.listen,
                lambda: self._config,
                self.spool,
                self.metrics,
                ready=self._ready,
                not_sending=self._not_sending,
                on_failed_status=self.bouncer.mark_failed_status,
            )
        self._lock: IO[str] | None = None
        self._spool_secret: str | None = None  # http.callback_secret when the config has none
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()

    @property
    def config(self) -> Config:
        return self._config

    def _ready(self) -> bool:
        # A shared database that is away makes every accept a 451: not ready, whatever the
        # listeners say, so a balancer sends the mail to a gateway that can store it.
        return self.smtp.listening() and self.spool.healthy

    async def start(self) -> None:
        if self._config.spool.url is None:
            self._lock = _lock_spool(self._config.spool.path)
        try:
            recovered = await self.spool.start()
            if recovered:
                log.warning("took back %d deliveries left in flight by a previous run", recovered)
            if self._config.http is not None:  # also for a reload that drops its own secret
                self._spool_secret = await self.spool.callback_secret()
                self._config = meta.with_callback_secret(self._config, self._spool_secret)
            await self.sender.start()
            await self.worker.start()
            await self.bouncer.start()
            await self.smtp.start()
            if self.status is not None:
                await self.status.start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "smtp2pulse ready: %d domains, platform %s%s",
            len(self._config.domains),
            self._config.api.send_url,
            " (dry run)" if self._config.api.dry_run else "",
        )
        if self._config.api.dry_run:
            log.warning(
                "dry run: nothing is sent to the platform; each request is logged and "
                "recorded as sent (api.dry_run: true or serve --dry-run)"
            )
        self.notifier.ready(f"accepting mail for {len(self._config.domains)} domains")

    async def stop(self) -> None:
        """Stops every component, the front first and the spool last; one that fails is logged
        and the rest are stopped all the same, so the spool is always closed and its lock let
        go."""
        for task in list(self._reloads):
            task.cancel()
        timeout = self._config.shutdown_timeout
        status = self.status
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("systemd notification", self.notifier.stopping),
            ("SMTP listeners", lambda: self.smtp.stop(timeout)),
            ("worker", lambda: self.worker.stop(timeout)),
            ("bouncer", self.bouncer.stop),
            # Last but the spool: /healthz says 503 while draining.
            *([("status server", status.stop)] if status is not None else []),
            ("sender", self.sender.stop),
            ("spool", self.spool.stop),
        ]
        try:
            for name, step in steps:
                try:
                    await step()
                except Exception:
                    log.exception("stopping the %s failed; stopping the rest", name)
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _not_sending(self) -> str | None:
        """Why nothing reaches the platform now (for /healthz); None while the sender works."""
        if self.sender.ready():
            return None
        if isinstance(self.sender, SenderProcess) and self.sender.trouble:
            return self.sender.trouble  # a stuck child being replaced
        return "sender process is not running"

    def on_sighup(self, path: str | os.PathLike[str]) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(path))
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self, path: str | os.PathLike[str]) -> bool:
        """Swap in a re-read config for new sessions and deliveries; keep the old on error."""
        async with self._reload_lock:  # one at a time, in the order they were asked for
            return await self._reload(path)

    async def _reload(self, path: str | os.PathLike[str]) -> bool:
        self.notifier.reloading()
        try:
            # In a thread: checking a large aliases file takes a while, and SMTP goes on.
            new = await asyncio.to_thread(load_config, path, dry_run=self._config.api.dry_run)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused, keeping the running config: %s", problem)
            self.notifier.reloaded("reload refused; running the previous config")
            return False
        except Exception:
            # Not a config problem but a bug: still the old config, and systemd hears READY.
            log.exception("reload failed, keeping the running config")
            self.notifier.reloaded("reload failed; running the previous config")
            return False
        for key in restart_only.changed_keys(new, self._config):
            log.warning("reload: %s changed; that takes effect only after a restart", key)
        self._config = meta.with_callback_secret(
            restart_only.keep_running(new, self._config), self._spool_secret
        )
        log.info("config reloaded: %d domains", len(new.domains))
        self.worker.wake()  # held deliveries are looked at again under the new limits
        self.notifier.reloaded(f"accepting mail for {len(new.domains)} domains")
        return True


def _make_sender(
    config: Config, mask_personal: Callable[[], bool], log_level: str
) -> SenderComponent:
    """The HTTP client in this process (api.sender: inline, the default), or with `process` in
    a child process (SMTP2PULSE_SENDER, when set, overrides the key): a second core for the
    sends, for more memory (bench/ measures both)."""
    mode = os.environ.get("SMTP2PULSE_SENDER") or config.api.sender
    if mode == "inline":
        if config.api.dry_run:
            return DryRunClient(config.api)
        from gateway.delivery.client import PulseClient  # httpx, only when used here

        return PulseClient(config.api)
    if mode != "process":
        raise ConfigError([f"SMTP2PULSE_SENDER: {mode!r} is neither 'process' nor 'inline'"])
    return SenderProcess(
        config.api, mask_personal=mask_personal, log_level=log_level, log_format=config.log_format
    )


def _lock_spool(path: Path) -> IO[str]:
    """One daemon per spool: two would send every message twice."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        # The first write the spool needs: say which key, and what the service must be given.
        raise SpoolError(
            f"spool.path {path}: cannot create {lock_path}: "
            f"{exc.strerror or exc} (the directory must exist or be creatable, "
            "and be writable by the user the service runs as)"
        ) from None
    handle = os.fdopen(lock, "a+")  # held while running
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolLocked(f"spool {path} is in use by another smtp2pulse") from None
    return handle


async def serve(
    config_path: str, *, dry_run: bool = False, verbose: bool = False, config: Config | None = None
) -> int:
    if config is None:
        config = load_config(config_path, dry_run=dry_run)
    setup_logging("debug" if verbose else config.log_level, config.log_format)
    loop = asyncio.get_running_loop()
    log.info("event loop: %s", type(loop).__module__.split(".")[0])
    gateway = Gateway(config, verbose=verbose)
    privacy.install(lambda: gateway.config.log_mask_personal)
    await gateway.start()
    stopping = asyncio.Event()

    def on_stop(signame: str) -> None:
        log.info("%s received: draining", signame)
        stopping.set()

    loop.add_signal_handler(signal.SIGTERM, on_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, on_stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, gateway.on_sighup, config_path)
    try:
        await stopping.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await gateway.stop()
    log.info("stopped")
    return 0
