"""The package logger and its once-per-reason debug line (for fallbacks taken on purpose)."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("hf_sparse_attn")
_logged: set[str] = set()


def debug_once(message: str) -> None:
    """Log ``message`` at debug level the first time it comes up in this process.

    Silent while ``torch.compile`` traces: a logging call would break the graph, and the eager run
    (or the first call before compiling) logs the same reason.
    """
    if torch.compiler.is_compiling():
        return
    if message not in _logged:
        _logged.add(message)
        logger.debug("%s; logged once", message)
