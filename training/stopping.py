"""Stopping `radproto train` on request: SIGINT / SIGTERM ask the loop to stop at the next
step boundary, where it checkpoints and raises TrainingInterrupted (`--resume` continues);
a second Ctrl-C aborts at once."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from radproto.model.errors import RadprotoError

if TYPE_CHECKING:
    from radproto.training.trainer import Trainer

log = logging.getLogger(__name__)


class TrainingInterrupted(RadprotoError):
    """Training stopped at a step boundary on request; the checkpoint holds the state."""


def install_stop_handlers(trainer: Trainer) -> dict[int, Any]:
    """SIGINT/SIGTERM ask for a stop at the next step boundary (state stays consistent)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("stopping after this step (Ctrl-C again to abort at once)")
        trainer.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def restore_stop_handlers(previous: dict[int, Any]) -> None:
    """The handlers install_stop_handlers replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)
