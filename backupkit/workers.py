"""Worker threads that stop together: the first failure, or Ctrl-C, stops them all."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


def run_workers(target: Callable[[Any], None], items: Sequence[Any], stop: threading.Event,
                name: str) -> None:
    """Run target(item) in one thread per item and wait; on an interrupt, set stop and re-raise.

    The main thread joins in short slices so that Ctrl-C reaches it while workers run."""
    threads = [threading.Thread(target=target, args=(item,), name=f"{name}-{i}", daemon=True)
               for i, item in enumerate(items)]
    for th in threads:
        th.start()
    try:
        for th in threads:
            while th.is_alive():
                th.join(0.2)
    except BaseException:
        stop.set()
        for th in threads:
            th.join(30)
        raise
