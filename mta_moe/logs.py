"""The library's messages through :mod:`logging`, under the ``mta_moe`` logger, from rank 0 only.

Library code logs with ``get_logger(__name__)``; nothing is printed until a handler is installed. The
``mta-moe`` command installs one with :func:`configure_logging` (level from ``MTA_MOE_LOG_LEVEL``, default
``INFO``): information on stdout, warnings and errors on stderr as ``warning: ...`` / ``error: ...``, written
through tqdm so progress bars stay intact. In a distributed run only rank 0's records pass, except errors,
which every rank reports (prefixed ``[rank N]``). A program that uses the library can call
``configure_logging()`` too, or attach its own handlers (add :class:`RankZeroFilter` to keep rank 0 only).
"""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "mta_moe"
LEVEL_ENV = "MTA_MOE_LOG_LEVEL"
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


def get_logger(name: str) -> logging.Logger:
    """The logger for a module of the package (``__name__``), or ``mta_moe.<name>``."""
    return logging.getLogger(
        name if name == LOGGER_NAME or name.startswith(LOGGER_NAME + ".") else f"{LOGGER_NAME}.{name}"
    )


def current_rank() -> int:
    """This process's global rank: the initialised process group's, else ``RANK`` from the launcher, else 0."""
    dist = sys.modules.get("torch.distributed")  # never imports torch itself
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


class RankZeroFilter(logging.Filter):
    """Passes every record on rank 0; on other ranks only errors, marked with the rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = current_rank()
        if rank == 0:
            return True
        if record.levelno >= logging.ERROR:
            record.rank_prefix = f"[rank {rank}] "
            return True
        return False


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = _PREFIX.get(record.levelno, "") + getattr(record, "rank_prefix", "")
        return prefix + super().format(record)


class _TqdmHandler(logging.Handler):
    """Writes through ``tqdm.write`` (an open progress bar is redrawn below the message)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout if record.levelno < logging.WARNING else sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def configure_logging(level: str | int | None = None) -> logging.Logger:
    """Install the command-line handler on the ``mta_moe`` logger (once); ``level`` defaults to
    ``$MTA_MOE_LOG_LEVEL`` or ``INFO``. Records do not propagate further, so they are not printed twice."""
    logger = logging.getLogger(LOGGER_NAME)
    name = level if level is not None else os.environ.get(LEVEL_ENV, "INFO")
    if isinstance(name, str):
        resolved = logging.getLevelName(name.strip().upper())
        if not isinstance(resolved, int):
            raise ValueError(f"{LEVEL_ENV}: expected DEBUG, INFO, WARNING or ERROR, got {name!r}")
        name = resolved
    logger.setLevel(name)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        handler.addFilter(RankZeroFilter())
        logger.addHandler(handler)
    logger.propagate = False
    return logger
