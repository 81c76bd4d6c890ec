"""The package logger, its once-per-reason debug line (for fallbacks taken on purpose) and its
once-per-reason warning (for configs that run but do not do what their budget suggests)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger("hf_sparse_attn")
_logged: set[str] = set()


def debug_once(message: str) -> None:
    """Log ``message`` at debug level the first time it comes up in this process.

    Silent while ``torch.compile`` traces: a logging call would break the graph, and the eager run
    (or the first call before compiling) logs the same reason.
    """
    _log_once(message, logging.DEBUG, message)


def warning_once(reason: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``reason`` comes up in this process (one line
    however many layers or prompts hit it; silent while ``torch.compile`` traces, as ``debug_once``)."""
    _log_once(reason, logging.WARNING, message)


def _log_once(reason: str, level: int, message: str) -> None:
    if torch.compiler.is_compiling():
        return
    if reason not in _logged:
        _logged.add(reason)
        logger.log(level, "%s; logged once", message)


@contextlib.contextmanager
def silenced(reason: str) -> Iterator[None]:
    """Within this context ``reason`` counts as already logged: for callers that run such a config on
    purpose (the eval's streaming baseline is sink + local blocks only by design). A reason first met
    inside is still logged once after it."""
    fresh = reason not in _logged
    _logged.add(reason)
    try:
        yield
    finally:
        if fresh:
            _logged.discard(reason)
