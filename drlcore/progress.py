"""Progress reporting that works in a terminal (tqdm) and in the app (callback).

Long stages take a ``Reporter`` and open one ``stage`` per loop::

    with reporter.stage("embedding", total=n, unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch), loss=0.12)

``TqdmReporter`` draws bars with rate and ETA; ``CallbackReporter`` forwards
``(stage, done, total, postfix)`` to a function (the explorer's live progress display);
``NullReporter`` is silent (tests, nested calls).

Library warnings (scikit-learn's RuntimeWarning on constant data, PIL's DecompressionBombWarning,
tifffile's log messages) would land raw on the console between progress lines. Around a whole
run, :func:`capture_warnings` collects them instead, counted by kind, for the run's notes::

    with capture_warnings() as log:
        ...
    log.summary()  # [{"category": "RuntimeWarning", "message": ..., "where": ..., "count": 3}]
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Reporter", "TqdmReporter", "CallbackReporter", "NullReporter", "StageHandle",
           "WarningLog", "capture_warnings"]


class StageHandle:
    def __init__(self, on_update: Callable[[int, dict], None],
                 on_finish: Callable[[dict], None] | None = None):
        self._on_update = on_update
        self._on_finish = on_finish
        self.done = 0

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.done += n
        self._on_update(n, postfix)

    def finish(self, **postfix: Any) -> None:
        """The stage is complete before its planned total (early stopping): shown as done,
        with ``postfix`` saying why, rather than as a bar cut off at 30%."""
        if self._on_finish is not None:
            self._on_finish(postfix)


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
            def show(postfix: dict) -> None:
                if postfix:
                    bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                                     for k, v in postfix.items()}, refresh=False)

            def on_update(n: int, postfix: dict) -> None:
                show(postfix)
                bar.update(n)

            def on_finish(postfix: dict) -> None:
                bar.total = bar.n
                show(postfix)
                bar.refresh()

            yield StageHandle(on_update, on_finish)

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
        planned = [total]  # finish() shortens it
        handle: StageHandle

        def on_update(n: int, postfix: dict) -> None:
            now = time.monotonic()
            if (now - last[0] >= self.min_interval
                    or (planned[0] is not None and handle.done >= planned[0])):
                last[0] = now
                self.callback(name, handle.done, planned[0], postfix)

        def on_finish(postfix: dict) -> None:
            planned[0] = handle.done
            self.callback(name, handle.done, planned[0], postfix)

        handle = StageHandle(on_update, on_finish)
        self.callback(name, 0, total, {})
        yield handle
        self.callback(name, handle.done, planned[0], {})

    def message(self, text: str) -> None:
        if self.on_message is not None:
            self.on_message(text)


class WarningLog:
    """Warnings and library log records, counted by (category, message, where)."""

    MAX_KINDS = 50  # distinct kinds kept; further ones are only counted

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()  # stages warn from their decode threads too
        self.dropped = 0

    def add(self, category: str, message: str, where: str) -> None:
        # The first line only, bounded: some libraries put whole arrays in their messages.
        key = (category, str(message).strip().split("\n", 1)[0][:300], where)
        with self._lock:
            if key in self._counts or len(self._counts) < self.MAX_KINDS:
                self._counts[key] = self._counts.get(key, 0) + 1
            else:
                self.dropped += 1

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.add(getattr(category, "__name__", str(category)), str(message),
                 _short_where(str(filename)))

    @property
    def total(self) -> int:
        return sum(self._counts.values()) + self.dropped

    def summary(self) -> list[dict]:
        """One entry per kind, most frequent first: category, message, where, count."""
        with self._lock:
            items = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out = [{"category": c, "message": m, "where": w, "count": n} for (c, m, w), n in items]
        if self.dropped:
            out.append({"category": "other", "message": "further kinds not listed",
                        "where": "", "count": self.dropped})
        return out


def _short_where(filename: str) -> str:
    """``.../site-packages/sklearn/decomposition/_pca.py`` -> ``sklearn/decomposition/_pca.py``."""
    parts = filename.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    return "/".join(parts[-3:])


_FILE_LIBRARY_LOGGERS = ("tifffile", "PIL", "imagecodecs")


class _LogCapture(logging.Handler):
    def __init__(self, log: WarningLog):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed log call must not break the run
            message = str(record.msg)
        self.log.add(f"log {record.levelname.lower()}", message, record.name)


@contextlib.contextmanager
def capture_warnings(log: WarningLog | None = None) -> Iterator[WarningLog]:
    """Collect Python warnings and WARNING-level log records into ``log`` instead of printing.

    Every warning the active filters would show is counted (each occurrence, not once per
    place: "once"/"default"/"module" become "always" inside); warnings filtered out stay out
    and "error" still raises. Log records are captured only where nothing else would print
    them (no handler on the root logger: Python's last-resort handler would write them raw to
    stderr), except the image libraries' loggers (tifffile, PIL, imagecodecs), always captured:
    what they say is about the user's files. Otherwise an application that configured logging
    keeps its own handling. Warnings raised
    in threads of this process are caught too (the hooks are process-wide), so only one
    capture should be active at a time; worker processes need their own.
    """
    log = log if log is not None else WarningLog()
    root = logging.getLogger()
    handler = _LogCapture(log)
    # The image libraries' loggers report on the user's files: always the run's notes.
    libraries = [logging.getLogger(name) for name in _FILE_LIBRARY_LOGGERS]
    propagate = [lib.propagate for lib in libraries]
    saved_default = warnings.defaultaction
    with warnings.catch_warnings():
        warnings.filters[:] = [(("always" if action in ("default", "module", "once") else action),
                                *rest) for action, *rest in warnings.filters]
        warnings.defaultaction = "always"
        warnings._filters_mutated()  # the C side caches filters by version
        warnings.showwarning = log.showwarning
        on_root = not root.handlers
        if on_root:
            root.addHandler(handler)
        for lib in libraries:
            lib.addHandler(handler)
            lib.propagate = False
        try:
            yield log
        finally:
            if on_root:
                root.removeHandler(handler)
            for lib, before in zip(libraries, propagate):
                lib.removeHandler(handler)
                lib.propagate = before
            warnings.defaultaction = saved_default
