"""Live progress for engine stages inside ``st.status``: one bar per stage, notes as text."""

from __future__ import annotations

import streamlit as st

from drlcore.progress import CallbackReporter


class StreamlitReporter(CallbackReporter):
    def __init__(self) -> None:
        self._bars: dict[str, object] = {}
        super().__init__(self._on_progress, on_message=self._on_message, min_interval=0.25)

    def _on_progress(self, stage: str, done: int, total: int | None, postfix: dict) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = st.progress(0.0, text=stage)
        extra = "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in postfix.items())
        if total:
            bar.progress(min(done / total, 1.0), text=f"{stage}: {done}/{total} {extra}")
        else:
            bar.progress(0.0, text=f"{stage}: {done} {extra}")

    def _on_message(self, text: str) -> None:
        st.write(text)
