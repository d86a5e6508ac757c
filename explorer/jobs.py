"""Background jobs in the app: start them, and show their progress on every page.

The work runs in a worker process (``drlcore.runs.jobs``) that writes ``<run>/job.json``; the app only
reads that file, in a fragment that reruns every second while a job runs. So a tab can navigate
away, close, or be opened twice: the job goes on, and any tab shows it. A session *watches* the
jobs it started or attached to; when a watched job is done, its run opens in that session.
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from drlcore.runs import jobs
from drlcore.errors import DrlError

POLL_SECONDS = 1.0
_WATCH = "app.jobs_watched"  # targets (str) this session waits for
_SEEN = "app.jobs_seen_running"  # targets seen running at the last poll


def watch(target: Path) -> None:
    watched = st.session_state.setdefault(_WATCH, [])
    if str(target) not in watched:
        watched.append(str(target))


def unwatch(target: str | Path) -> None:
    """The session has opened ``target``'s run: stop waiting for its job."""
    watched = st.session_state.get(_WATCH, [])
    st.session_state[_WATCH] = [t for t in watched if t != str(target)]


def start_demo(runs_dir: Path) -> jobs.JobStatus:
    """Start the demo build (or attach to the one running) and watch it."""
    from drlcore.runs.demo import DEMO_IMAGES, demo_run_dir

    target = demo_run_dir(runs_dir)
    status, _ = jobs.start_job(target, "demo", ["--runs-dir", str(runs_dir), "--n-images", str(DEMO_IMAGES)])
    watch(target)
    return status


def start_run(target: Path, data: Path, settings: dict, cleanup: Path | None = None) -> jobs.JobStatus:
    args = ["--data", str(data), "--config", json.dumps(settings)]
    if cleanup is not None:
        args += ["--cleanup", str(cleanup)]
    status, _ = jobs.start_job(target, "run", args)
    watch(target)
    return status


def job_targets(runs_dir: Path) -> list[Path]:
    """Folders under ``runs_dir`` with a job file, plus the ones this session watches."""
    found = []
    if runs_dir.is_dir():
        found = [p.parent for p in runs_dir.glob(f"*/{jobs.JOB_FILE}")]
    found += [Path(p) for p in st.session_state.get(_WATCH, [])]
    return list(dict.fromkeys(found))


def _describe(status: jobs.JobStatus) -> str:
    what = "Building the demo" if status.kind == "demo" else f"Analysing into {status.target.name}"
    return f"{what}: {status.message or 'starting'}"


def _draw(runs_dir: Path, compact: bool) -> None:
    watched = set(st.session_state.get(_WATCH, []))
    seen = set(st.session_state.get(_SEEN, []))
    running, finished = [], []
    for target in job_targets(runs_dir):
        status = jobs.read_job(target)
        if status is None:
            continue
        if status.running:
            running.append(status)
        elif str(target) in watched or str(target) in seen:
            finished.append(status)
    for status in running:
        text = _describe(status)
        if status.fraction is not None:
            st.progress(min(max(status.fraction, 0.0), 1.0), text=text)
        else:
            st.caption(text)
    if not compact:
        for status in finished:
            if status.state == "failed" and str(status.target) in watched:
                st.error(f"{status.target.name}: {status.error or 'the job failed'}\n\nNo earlier run "
                         "was changed.", icon=":material/error:")
    now_running = {str(s.target) for s in running}
    st.session_state[_SEEN] = sorted(now_running)
    done = [str(s.target) for s in finished if s.state == "done" and str(s.target) in watched]
    if done:
        # The target stays watched until the full-app run opens it (``unwatch`` in the sidebar):
        # should this rerun request be lost (two jobs ending in the same second, two fragments
        # polling), the next poll asks again instead of forgetting the finished job.
        st.session_state["app.request_run"] = done[0]
        st.session_state["data.just_added"] = Path(done[0]).name
    if done or (seen - now_running):
        st.rerun(scope="app")  # the run list, the picker and the open run change with it


@st.fragment(run_every=POLL_SECONDS)
def _live(runs_dir: str, compact: bool) -> None:
    _draw(Path(runs_dir), compact)


def any_running(runs_dir: Path) -> bool:
    for target in job_targets(runs_dir):
        status = jobs.read_job(target)
        if status is not None and (status.running or str(target) in st.session_state.get(_WATCH, [])):
            return True
    return False


def show_jobs(runs_dir: Path, compact: bool = False) -> None:
    """Progress of the jobs under ``runs_dir``, live while any runs (or this session waits)."""
    if any_running(runs_dir):
        _live(str(runs_dir), compact)
    else:
        _draw(runs_dir, compact)


def start_error(exc: DrlError) -> None:
    st.error(str(exc), icon=":material/error:")
