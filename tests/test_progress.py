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


def test_a_stage_that_stops_early_is_shown_complete_with_the_reason():
    """Early stopping ends training at 840 of 2,800 planned steps: the bar and the app's
    callback show the stage done (840/840) and why, not a bar frozen at 30%."""
    seen = []
    with CallbackReporter(lambda *a: seen.append(a), min_interval=3600).stage(
            "transfer", total=2800, unit="step") as bar:
        bar.update(840)
        bar.finish(stopped="early, epoch 61")
    assert seen[-2:] == [("transfer", 840, 840, {"stopped": "early, epoch 61"}),
                         ("transfer", 840, 840, {})]
    out = io.StringIO()
    with TqdmReporter(file=out).stage("transfer", total=2800, unit="step") as bar:
        bar.update(840)
        bar.finish(stopped="early, epoch 61")
    last = out.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "840/840" in last and "100%" in last and "early, epoch 61" in last
    with NullReporter().stage("x", total=5) as bar:
        bar.update(2)
        bar.finish()
    assert bar.done == 2
