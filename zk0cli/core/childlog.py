"""The one logger of the processes zk0 supervises (ClientApp host, fleet proxy, auto-run, the
supervisor itself): plain lines on stdout, which the supervisor stamps and rotates into the
service's log, so ``zk0 logs`` and ``zk0 status`` read every component the same way."""

from __future__ import annotations

import logging
import sys

PREFIX = "zk0: "


class _LineFormatter(logging.Formatter):
    """``zk0: message``; warnings and errors also name their level, so a reader can grep them."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname} "
        return PREFIX + level + super().format(record)


def child_logger(component: str) -> logging.Logger:
    """``zk0.<component>``, writing through its own stdout handler (installed on first use)."""
    logger = logging.getLogger(f"zk0.{component}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_LineFormatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # Flower configures logging in its processes too: no doubled lines
    return logger
