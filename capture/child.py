"""What the processes twistd supervises share: their logging, and ending with their parent."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.internet import TimerService
from twisted.logger import FileLogObserver, Logger, eventAsText, globalLogBeginner

from capture import config

log = Logger()


def load_settings(name: str, path: str) -> config.Settings:
    """The config, or one line on stderr and exit status 2: the supervising twistd logs it."""
    try:
        return config.load(path)
    except config.ConfigError as e:
        print(f"{name}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def log_to_stdout() -> None:
    """Plain lines on stdout: the supervising twistd prefixes each with its time and our name."""
    observer = FileLogObserver(
        sys.stdout, lambda event: eventAsText(event, includeTimestamp=False, includeSystem=False) + "\n"
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def exit_if_orphaned(reactor: Any, parent: int) -> None:
    """Stop when the supervising twistd is gone (killed with -9, say), so no orphan lingers."""
    if os.getppid() != parent and reactor.running:
        log.warn("parent process {pid} is gone; stopping", pid=parent)
        reactor.stop()


def orphan_watch(reactor: Any) -> TimerService:
    """A service that checks every second whether our parent is still there."""
    watch = TimerService(1.0, exit_if_orphaned, reactor, os.getppid())
    watch.clock = reactor
    return watch
