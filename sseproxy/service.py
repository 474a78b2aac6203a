"""A running ``sseproxy serve``: start the listener, reload on SIGHUP, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .accesslog import AccessLog
from .config import Config
from .errors import ConfigError
from .limits import StreamCounts
from .loader import Overrides, load
from .logs import LineFormatter, Redactor
from .metrics import Metrics
from .runtime import Runtime, compile_config
from .server import Listener
from .tap import Tap

log = logging.getLogger("sseproxy")


def settle_heap() -> None:
    """Collect once, freeze what start-up made (config, routes, modules) so no collection walks it again,
    and collect the young generation less often: a request allocates a few hundred objects and almost
    none form cycles. Measured: about 7 % less CPU per stream opened, with 1,000 streams open."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 100)


@dataclass(frozen=True)
class TapOptions:
    """``--tap`` and its ``--tap-width``, ``--tap-route`` and ``--tap-field``."""

    width: int | None = None               # None: the terminal's width, or 200 in a pipe
    routes: tuple[str, ...] = ()           # empty: every route
    field: str | None = None               # a JSON path into each event's data


@dataclass(frozen=True)
class ServeOptions:
    config_path: str | None
    overrides: Overrides
    watch: bool = False
    tap: TapOptions | None = None          # --tap, with its options
    reuse_port: bool = False               # a worker of --workers N
    metrics_dir: str | None = None         # prometheus-client multiprocess directory, with --workers
    log_format: str | None = None          # --log-format: every line, the access log's too, whatever the file says


def ready_line(host: str, port: int, routes: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"sseproxy listening on http://{shown}:{port} with {routes} route{'s' if routes != 1 else ''}"


class Service:
    def __init__(self, options: ServeOptions, config: Config, redactor: Redactor,
                 formatter: LineFormatter | None = None):
        self.options = options
        self.redactor = redactor
        self.formatter = formatter
        counts = StreamCounts()
        snapshot = compile_config(config, counts)
        redactor.add(snapshot.secrets)
        tap = options.tap
        self.runtime = Runtime(snapshot, counts=counts,
                               hooks=(Tap(redact=redactor, width=tap.width, routes=tap.routes, field=tap.field),)
                               if tap is not None else (),
                               metrics=Metrics(options.metrics_dir))
        self.access_log = AccessLog(enabled=config.access_log != "off")
        self.listener = Listener(self.runtime, self.access_log, reuse_port=options.reuse_port)
        self._stop = asyncio.Event()

    def _apply_access_log(self, mode: str) -> None:
        """``access_log`` applies at once, also on reload: on or off, and its line format."""
        self.access_log.enabled = mode != "off"
        if self.formatter is not None and mode != "off" and self.options.log_format is None:
            self.formatter.access = mode

    def reload(self) -> bool:
        """Apply a valid new config to new requests; keep the old one when the new one is invalid."""
        try:
            config = load(self.options.config_path, self.options.overrides)
        except ConfigError as e:
            log.error("reload failed, keeping the old config:\n%s", e)
            self.runtime.metrics.reloads.labels("failed").inc()
            return False
        snapshot = compile_config(config, self.runtime.counts)
        self.redactor.add(snapshot.secrets)
        self.runtime.swap(snapshot)
        self._apply_access_log(snapshot.access_log)
        self.runtime.metrics.reloads.labels("ok").inc()
        log.info("config reloaded: %d routes", len(snapshot.routes))
        return True

    async def watch(self, interval: float = 0.5) -> None:
        """``--watch``: reload when the config file's modification time or size changes."""
        path = Path(self.options.config_path or "")

        def stamp() -> tuple[int, int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return st.st_mtime_ns, st.st_size

        last = stamp()
        while True:
            await asyncio.sleep(interval)
            current = stamp()
            if current != last and current is not None:
                last = current
                self.reload()

    async def run(self, announce: Callable[[str], None]) -> None:
        config = self.runtime.snapshot.config
        host, port = config.listen_address
        bound = await self.listener.start(host, port)
        settle_heap()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        announce(ready_line(bound[0], bound[1], len(self.runtime.snapshot.routes)))
        watcher = asyncio.create_task(self.watch()) if self.options.watch and self.options.config_path else None
        try:
            await self._stop.wait()
            log.info("stopping: letting requests in flight finish for up to %gs",
                     self.runtime.snapshot.config.shutdown_grace)
        finally:
            if watcher is not None:
                watcher.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.listener.stop()
