"""What a Hub download reports while it runs, through huggingface_hub's own hook.

``snapshot_download`` takes a ``tqdm_class``: :func:`counting` gives it a real tqdm that writes
nowhere and hands its numbers (files done of the files to fetch, bytes fetched) to the watcher
the command line installed (:func:`set_watcher`). Without one nothing is shown, so the Flower
processes, service logs and pipes never get bars; and HF's own bars are never used at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

Report = Callable[[int, int, int], None]  # (files done, files to fetch, bytes fetched)
Watcher = Callable[[str], AbstractContextManager[Report]]  # what is downloaded -> where its numbers go

_watcher: Watcher | None = None


def set_watcher(watcher: Watcher | None) -> None:
    """Who shows downloads: set once by the command line, which alone knows the terminal."""
    global _watcher
    _watcher = watcher


def _ignore(files_done: int, files_total: int, fetched: int) -> None:
    """Nobody watches."""


@contextmanager
def counting(what: str) -> Iterator[type[tqdm]]:
    """A tqdm class for one ``snapshot_download`` of ``what``; the watcher sees its numbers until
    the block ends."""
    with _watcher(what) if _watcher is not None else nullcontext(_ignore) as report:
        bars = _bars(report)
        try:
            yield bars
        finally:
            bars.done = True  # HF never closes its byte bars: a late redraw must not report


class _Nowhere:
    """tqdm's output file: the numbers go to the watcher instead."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _bars(report: Report) -> type[tqdm]:
    from tqdm.auto import tqdm

    files: list[tqdm] = []  # the one bar counting files (snapshot_download's thread map)
    byte_bars: list[tqdm] = []  # bytes written and, for Xet, bytes received: the larger is shown

    class Bar(tqdm):
        monitor_interval = 0  # no tqdm monitor thread
        done = False

        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.pop("name", None)  # huggingface_hub passes it to its own bars only
            super().__init__(*args, file=_Nowhere(), **kwargs)
            (byte_bars if self.unit == "B" else files).append(self)

        def display(self, *_args: Any, **_kwargs: Any) -> bool:
            # tqdm calls this for every redraw (at most every mininterval) and on close
            if not Bar.done:
                counted = files[0] if files else None
                fetched = max((int(bar.n) for bar in byte_bars), default=0)
                report(int(counted.n) if counted else 0, int(counted.total or 0) if counted else 0, fetched)
            return True

    return Bar
