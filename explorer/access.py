"""Who may use this server, and what a browser may name on it (set by ``drl explore`` at start).

- The session token: ``drl explore --host ADDR`` generates one (or takes ``--token``) and hands it
  to this process in the environment variable ``DRL_EXPLORE_TOKEN`` (not on the command line,
  where every account on the machine could read it with ``ps``). A browser session must open the
  printed URL ``...?token=...`` once; the session then remembers it.
- ``--data-root DIR`` (repeatable): the only folders "Add data" may read; none = uploads only.
- ``--min-free-mb N``: a new run needs this much free space in the runs folder.
"""

from __future__ import annotations

import argparse
import hmac
import os

import streamlit as st

TOKEN_ENV = "DRL_EXPLORE_TOKEN"
DEFAULT_MIN_FREE_MB = 1024
DEFAULT_MAX_UPLOAD_MB = 4096


def parse_serving_args(argv: list[str]) -> argparse.Namespace:
    """The serving options after ``--`` (others are ignored: explorer.data parses those)."""
    parser = argparse.ArgumentParser(prog="drl explore", add_help=False, allow_abbrev=False)
    parser.add_argument("--data-root", action="append", default=[])
    parser.add_argument("--min-free-mb", type=float, default=DEFAULT_MIN_FREE_MB)
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB)
    return parser.parse_known_args(argv)[0]


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so response times do not leak the token."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def expected_token(environ: dict | None = None) -> str | None:
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "")
    return value or None


def require_token() -> None:
    """Stop the script run unless this session showed the server's token (when it has one)."""
    expected = expected_token()
    if expected is None or st.session_state.get("app.token_ok"):
        return
    given = st.query_params.get("token")
    if token_matches(given, expected):
        st.session_state["app.token_ok"] = True
        del st.query_params["token"]  # keep it out of screenshots and shared links
        return
    st.title("drl explorer")
    if given:
        st.error("That token is not this server's. Open the address with `?token=...` that "
                 "`drl explore` printed in its terminal.", icon=":material/lock:")
    else:
        st.warning("This explorer needs the token printed in the terminal where `drl explore` was "
                   "started: open the address shown there (it ends in `?token=...`).",
                   icon=":material/lock:")
    st.stop()
