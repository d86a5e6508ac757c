"""Where a run may be written: the one check every command that writes a run folder goes through.

:func:`prepare_output_dir` refuses, with a message that says what to do instead:

- an output path that is a file (or anything else that is not a folder);
- the input folder itself (the run's files would lie among the user's images, and the next run
  would read them as images);
- a folder that is not empty and is not a drl run folder (the user's own ``model/`` or
  ``features.npy`` would be overwritten), unless ``force``;
- a folder that cannot be created or written (permissions, read-only file system).

An output folder *inside* the input folder is allowed: discovery leaves run folders out (see
:mod:`drlcore.data.discover`). A new or empty folder is claimed at once with an empty versioned
manifest, so a run killed before its first stage finished is still recognised as ours when it
is resumed. :func:`check_cache_dir` does the same kind/writability check for the cache folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from drlcore.data import rundir
from drlcore.errors import DrlError
from drlcore.io import atomic_write_json

__all__ = ["prepare_output_dir", "check_cache_dir"]


def _is_run_folder(path: Path) -> bool:
    return rundir.is_run_dir(path)


def _user_entries(folder: Path) -> list[str]:
    """What is in ``folder`` besides hidden files (``.DS_Store``, our own ``.*.tmp``)."""
    return sorted(os.fsencode(name).decode("utf-8", "backslashreplace")
                  for name in os.listdir(folder) if not name.startswith("."))


def _check_writable(folder: Path, what: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".drl-write-check-"):
            pass
    except OSError as exc:
        raise DrlError(f"{what} {folder} is not writable ({exc.strerror or exc}); give a folder "
                       f"you can write to") from None


def _make_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DrlError(f"{what} {folder} cannot be created: a part of that path is a file") from None
    except OSError as exc:
        raise DrlError(f"{what} {folder} cannot be created ({exc.strerror or exc}); give a "
                       f"folder you can write to") from None


def prepare_output_dir(out: str | os.PathLike, data: str | os.PathLike | None = None,
                       force: bool = False, what: str = "--out") -> Path:
    """Check that a run may be written to ``out`` (see module docstring), create it, and claim
    it as a run folder; return it. ``data`` is the input (folder, zip, or a run folder being
    encoded in place). ``what`` names the option in messages."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DrlError(f"{what} {out} is a file, not a folder; give a folder to write the run to "
                       f"(it is created if missing)")
    if data is not None:
        source = Path(data).expanduser()
        if not os.path.lexists(source):  # before anything is created for a run that cannot be
            raise DrlError(f"{source} does not exist; give a folder of images or a .zip of one")
        if (source.is_dir() and out.exists() and os.path.samefile(source, out)
                and not _is_run_folder(source)):
            raise DrlError(f"{what} {out} is the input folder itself: the run's files would lie "
                           f"among your images. Give another folder, e.g. "
                           f"{source.absolute().parent / (source.absolute().name + '-run')}")
    if out.is_dir():
        try:
            entries = _user_entries(out)
        except OSError as exc:
            raise DrlError(f"{what} {out} cannot be read ({exc.strerror or exc})") from None
        if entries and not _is_run_folder(out) and not force:
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise DrlError(f"{what} {out} is not empty ({shown}) and is not a drl run folder; "
                           f"drl would write among those files and could overwrite them. Give "
                           f"a new or empty folder, or add --force to write there anyway")
        fresh = not entries
    else:
        _make_folder(out, what)
        fresh = True
    _check_writable(out, what)
    if fresh:
        atomic_write_json(out / rundir.MANIFEST,
                          {"schema_version": rundir.SCHEMA_VERSION, "stages": {}})
    return out


def check_cache_dir(cache_dir: str | os.PathLike | None) -> str | None:
    """Check the cache root that will be used (``cache_dir``, else ``$DRL_CACHE_DIR``, else the
    user cache folder): None when it can be used, else a note saying why the run goes on
    without storing to it. A cache is an optimisation: a folder that cannot be created or
    written (read-only, a full disk) never stops a run; only a path that names a file, surely a
    mistake in the option, is an error."""
    from drlcore.data.cache import cache_root

    root = Path(cache_root(cache_dir))
    if root.exists() and not root.is_dir():
        raise DrlError(f"the cache folder {root} is a file, not a folder; give --cache-dir a "
                       f"folder (or set DRL_CACHE_DIR)")
    try:
        _make_folder(root, "the cache folder")
        _check_writable(root, "the cache folder")
    except DrlError as exc:
        return (f"{str(exc).split('; give')[0]}: the run goes on without storing to the cache "
                f"(what it already holds is still used)")
    return None
