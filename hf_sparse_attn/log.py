"""The package logger and its once-per-reason debug line (for fallbacks taken on purpose)."""

from __future__ import annotations

import logging

logger = logging.getLogger("hf_sparse_attn")
_logged: set[str] = set()


def debug_once(message: str) -> None:
    """Log ``message`` at debug level the first time it comes up in this process."""
    if message not in _logged:
        _logged.add(message)
        logger.debug("%s; logged once", message)
