"""Progress reporting that works in a terminal (tqdm) and in the app (callback).

Long stages take a ``Reporter`` and open one ``stage`` per loop::

    with reporter.stage("embedding", total=n, unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch), loss=0.12)

``TqdmReporter`` draws bars with rate and ETA; ``CallbackReporter`` forwards
``(stage, done, total, postfix)`` to a function (the explorer's live progress display);
``NullReporter`` is silent (tests, nested calls).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Reporter", "TqdmReporter", "CallbackReporter", "NullReporter", "StageHandle"]


class StageHandle:
    def __init__(self, on_update: Callable[[int, dict], None]):
        self._on_update = on_update
        self.done = 0

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        self._on_update(n, postfix)


class Reporter:
    """Base class: subclasses implement ``stage``; ``message`` prints a one-line note."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None, unit: str = "it") -> Iterator[StageHandle]:
        yield StageHandle(lambda n, p: None)

    def message(self, text: str) -> None:  # pragma: no cover - trivial
        pass


class NullReporter(Reporter):
    pass


class TqdmReporter(Reporter):
    def __init__(self, file=None, disable: bool = False, notebook: bool = False):
        self.file = file or sys.stderr
        self.disable = disable
        # A notebook's output is no terminal, but a person watches it: redraw as often as in one
        # (tqdm.auto draws a widget there when ipywidgets is installed, else a text bar).
        self.notebook = notebook

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None, unit: str = "it") -> Iterator[StageHandle]:
        from tqdm.auto import tqdm

        # Off a terminal (CI logs, background jobs) tqdm would hide the bar; print a line every
        # 30 s instead, so a long job still shows it is alive and how far it got.
        interactive = self.notebook or (hasattr(self.file, "isatty") and self.file.isatty())
        with tqdm(total=total, desc=name, unit=unit, file=self.file, dynamic_ncols=True,
                  disable=bool(self.disable), smoothing=0.1,
                  mininterval=0.1 if interactive else 30.0) as bar:
            def on_update(n: int, postfix: dict) -> None:
                if postfix:
                    bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                     for k, v in postfix.items()}, refresh=False)
                bar.update(n)

            yield StageHandle(on_update)

    def message(self, text: str) -> None:
        print(text, file=self.file, flush=True)


class CallbackReporter(Reporter):
    """Calls ``callback(stage, done, total, postfix)``; at most every ``min_interval`` seconds."""

    def __init__(self, callback: Callable[[str, int, int | None, dict], None],
                 on_message: Callable[[str], None] | None = None, min_interval: float = 0.2):
        self.callback = callback
        self.on_message = on_message
        self.min_interval = min_interval

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None, unit: str = "it") -> Iterator[StageHandle]:
        last = [float("-inf")]  # the first update is always shown
        handle: StageHandle

        def on_update(n: int, postfix: dict) -> None:
            now = time.monotonic()
            if now - last[0] >= self.min_interval or (total is not None and handle.done >= total):
                last[0] = now
                self.callback(name, handle.done, total, postfix)

        handle = StageHandle(on_update)
        self.callback(name, 0, total, {})
        yield handle
        self.callback(name, handle.done, total, {})

    def message(self, text: str) -> None:
        if self.on_message is not None:
            self.on_message(text)
