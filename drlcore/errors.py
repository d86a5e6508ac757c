"""Errors meant for the person running the tool, not for a traceback."""


class DrlError(Exception):
    """A problem the user can fix (bad input, missing weights, wrong model for the data).

    The CLI prints ``str(error)`` and exits with status 2, without a traceback; the app shows it
    in an error box. The message must say what went wrong and what to do about it.
    """


class SkipImage(Exception):
    """One image cannot be used; the run goes on and lists it with ``reason``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
