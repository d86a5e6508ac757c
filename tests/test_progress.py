"""Progress reporting: the terminal bar and the app's callback see the same stages."""

from __future__ import annotations

import io

from drlcore.progress import CallbackReporter, NullReporter, TqdmReporter


def test_callback_reporter_reports_start_throttled_updates_and_end():
    seen = []
    reporter = CallbackReporter(lambda *a: seen.append(a), min_interval=3600)
    with reporter.stage("embedding", total=10, unit="img") as bar:
        for _ in range(10):
            bar.update(1, loss=0.5)
    # Start, the first update, the one that completes the stage (throttling drops the rest), end.
    assert seen == [("embedding", 0, 10, {}), ("embedding", 1, 10, {"loss": 0.5}),
                    ("embedding", 10, 10, {"loss": 0.5}), ("embedding", 10, 10, {})]


def test_callback_reporter_forwards_messages():
    messages = []
    CallbackReporter(lambda *a: None, on_message=messages.append).message("[1/4] features")
    assert messages == ["[1/4] features"]


def test_tqdm_reporter_prints_progress_off_a_terminal():
    out = io.StringIO()  # not a TTY: the bar must still appear (CI logs, background jobs)
    with TqdmReporter(file=out).stage("morphology", total=4, unit="img") as bar:
        bar.update(4, note="ok")
    assert "morphology" in out.getvalue() and "4/4" in out.getvalue()


def test_null_reporter_counts_silently():
    with NullReporter().stage("x", total=2) as bar:
        bar.update(2)
    assert bar.done == 2
