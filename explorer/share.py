"""Shareable views: what a page shows, as URL query parameters and as views saved in the run.

The page is the URL's path (``/class_map``: Streamlit's own multipage routing, what the
navigation menu writes and a bookmark keeps); everything else the page shows is a query
parameter (``?run=cells&colour=morph_area&compare=groups&a=class&a_class=platelet...``). The
entry file restores the parameters once, when a browser session opens with them, and writes
the current state back on every run, so the address bar is always a link to what is on screen.

A saved view is the same thing in a file (``RUN/views/<name>.json``, written by
:mod:`drlcore.data.rundir`): the page and its parameters, without the URL's length limit.

No Streamlit here: the functions map plain ``session_state``-like dicts to parameter dicts, so
they are testable on their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

PAGES = ("datasets", "traversals", "correlations", "class_map", "anomalies", "source_model")
GROUP_KINDS = ("class", "selection", "threshold", "rest")
THRESHOLD_OPS = (">=", "<=")
MAX_URL_ROWS = 1500  # characters of encoded object rows a URL carries; longer: save the view


@dataclass(frozen=True)
class Param:
    """One URL parameter: its name, the session-state key it mirrors, its kind, and when it
    applies (every ``(key, value)`` in ``when`` must hold in the state)."""

    name: str
    key: str
    kind: str  # "int", "float", "str", "bool", "list", "rows"
    when: tuple[tuple[str, str], ...] = ()
    valid: Callable[[object], bool] | None = None


def _group_params(g: str) -> tuple[Param, ...]:
    groups = (("map.compare", "groups"),)
    return (
        Param(g, f"map.{g}.kind", "str", groups, lambda v: v in GROUP_KINDS),
        Param(f"{g}_class", f"map.{g}.classes", "list", (*groups, (f"map.{g}.kind", "class"))),
        Param(f"{g}_rows", f"map.{g}.rows", "rows", (*groups, (f"map.{g}.kind", "selection"))),
        Param(f"{g}_feature", f"map.{g}.feature", "str", (*groups, (f"map.{g}.kind", "threshold"))),
        Param(f"{g}_op", f"map.{g}.op", "str", (*groups, (f"map.{g}.kind", "threshold")),
              lambda v: v in THRESHOLD_OPS),
        Param(f"{g}_value", f"map.{g}.value", "float", (*groups, (f"map.{g}.kind", "threshold"))),
    )


PAGE_PARAMS: dict[str, tuple[Param, ...]] = {
    "traversals": (
        Param("dim", "trav.dim", "int", valid=lambda v: v >= 0),
        Param("steps", "trav.n_steps", "int", valid=lambda v: 5 <= v <= 15 and v % 2 == 1),
        Param("all", "trav.show_all", "bool"),
    ),
    "correlations": (
        Param("method", "corr.method", "str"),
        Param("dim", "corr.dim", "int", valid=lambda v: v >= 0),
        Param("feature", "corr.feature", "str"),
        Param("cluster", "corr.cluster", "bool"),
    ),
    "class_map": (
        Param("map", "map.projection", "str"),
        Param("colour", "map.color_by", "str"),
        Param("sel", "map.selected", "rows"),
        Param("compare", "map.compare", "str", valid=lambda v: v in ("rest", "groups")),
        *_group_params("a"),
        *_group_params("b"),
    ),
    "anomalies": (
        Param("known", "anom.known", "list"),
        Param("score", "anom.score", "str"),
        Param("quantile", "anom.quantile", "float", valid=lambda v: 0.8 <= v <= 0.999),
    ),
}


def encode_rows(rows) -> str:
    """Object rows as ranges: ``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    values = sorted({int(r) for r in rows})
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def decode_rows(text: str) -> list[int]:
    """The inverse of :func:`encode_rows`; raises ValueError on anything else."""
    rows: set[int] = set()
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        low, sep, high = part.partition("-")
        a = int(low)
        b = int(high) if sep else a
        if a < 0 or b < a or b - a > 10_000_000:
            raise ValueError(f"bad row range {part!r}")
        rows.update(range(a, b + 1))
    return sorted(rows)


def _holds(param: Param, state: Mapping) -> bool:
    return all(state.get(key) == value for key, value in param.when)


def _encode(param: Param, value) -> list[str] | None:
    if value is None:
        return None
    if param.kind == "bool":
        return ["1"] if value else None
    if param.kind == "list":
        items = [str(v) for v in value]
        return items or None
    if param.kind == "rows":
        text = encode_rows(value)
        return [text] if text else None
    if param.kind == "float":
        value = float(value)
        return [repr(value)] if math.isfinite(value) else None
    if param.kind == "int":
        return [str(int(value))]
    text = str(value)
    return [text] if text else None


def view_params(state: Mapping, page: str, run_name: str | None = None,
                max_rows_chars: int | None = MAX_URL_ROWS) -> tuple[dict[str, list[str]], list[str]]:
    """(parameters, left out): what ``page`` shows in ``state``, as ``{name: [values]}``.

    Values that are unset, empty or default-off are left out, so links stay short. Object rows
    longer than ``max_rows_chars`` (a lasso over thousands of points) are left out and named in
    the second list; ``None`` keeps them all (a saved view)."""
    params: dict[str, list[str]] = {}
    left_out: list[str] = []
    if run_name:
        params["run"] = [run_name]
    for param in PAGE_PARAMS.get(page, ()):
        if not _holds(param, state):
            continue
        values = _encode(param, state.get(param.key))
        if values is None:
            continue
        if param.kind == "rows" and max_rows_chars is not None and len(values[0]) > max_rows_chars:
            left_out.append(param.name)
            continue
        params[param.name] = values
    return params, left_out


def _decode(param: Param, values: list[str]):
    if param.kind == "list":
        return [str(v) for v in values]
    value = values[-1]
    if param.kind == "rows":
        return decode_rows(value)
    if param.kind == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(value)
    if param.kind == "int":
        return int(value)
    if param.kind == "float":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(value)
        return number
    return str(value)


def state_from_params(params: Mapping[str, list[str] | str], page: str) -> tuple[dict, list[str]]:
    """(session-state entries, problems) that reopen ``page`` as ``params`` describe it.

    Unknown parameters are ignored (a token, Streamlit's own ``embed``); a value that does not
    parse is skipped and named in ``problems``, the rest still applies. Values that parse but do
    not fit this run (a dimension it lacks, a feature it did not measure) are left to the page,
    which falls back to its default as it does for any stale choice. Group parameters switch
    their dependent keys on: ``a_class=x`` alone implies ``compare=groups`` and ``a=class``."""
    state: dict = {}
    problems: list[str] = []
    for param in PAGE_PARAMS.get(page, ()):
        raw = params.get(param.name)
        if raw is None:
            continue
        values = [raw] if isinstance(raw, str) else [str(v) for v in raw]
        if not values:
            continue
        try:
            value = _decode(param, values)
            if param.valid is not None and not param.valid(value):
                raise ValueError(values[-1])
        except ValueError:
            problems.append(f"{param.name}={values[-1]}")
            continue
        state[param.key] = value
        # The kinds come before their fields in PAGE_PARAMS, so one given explicitly wins.
        for key, needed in param.when:
            state.setdefault(key, needed)
    return state, problems


def flatten(params: Mapping[str, list[str]]) -> dict[str, str | list[str]]:
    """Single values as strings, repeated ones as lists (what ``st.query_params`` takes)."""
    return {k: (v[0] if len(v) == 1 else list(v)) for k, v in params.items()}


def owned_names() -> set[str]:
    """Every parameter name this module writes (others in the URL are left alone)."""
    return {"run"} | {p.name for params in PAGE_PARAMS.values() for p in params}
