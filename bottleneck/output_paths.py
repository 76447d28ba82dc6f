"""Where a command will write, checked before it starts work.

``bottleneck bench speed`` runs for half an hour and writes its JSON, Markdown and
figure at the end: a ``--json`` that names a folder, a ``--figure`` with a suffix
matplotlib cannot write, or a folder that cannot be written in failed there, as a
traceback, with the run's figures lost. Each command declares its outputs (an option
and what it names: a file, a figure or a folder) and :func:`check_output` checks
each before anything runs, so a bad path costs a second and says what was expected.
Whether a folder can be written in is tried by making a temporary file there: a
permission check (``os.access``) passes for root even where no file can be made (``/proc``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import BottleneckError
from .viz import pyplot

#: What an output option names: a file, a figure (a file whose suffix picks the format) or a folder.
FILE, FIGURE, FOLDER = "file", "figure", "folder"


def check_output(path: str, kind: str, option: str) -> None:
    """Raise a :class:`BottleneckError` unless ``path`` can be written as a ``kind`` (:data:`FILE`,
    :data:`FIGURE` or :data:`FOLDER`); ``option`` (``--json``) names it in the message.

    Folders that do not exist yet are fine (the command creates them); the nearest one that
    does must be a writable folder.
    """
    out = Path(path)
    if kind == FOLDER:
        if out.exists() and not out.is_dir():
            raise BottleneckError(f"{option} {path} is a file; expected a folder to write into")
    elif out.is_dir():
        raise BottleneckError(f"{option} {path} is a folder; expected a file name in it")
    if kind == FIGURE:
        _check_figure_format(out, option)
    _check_writable_folder(out if kind == FOLDER else out.parent, path, option)


def _check_figure_format(out: Path, option: str) -> None:
    """The suffix names a format matplotlib writes (it would otherwise add ``.png`` or fail at the end)."""
    pyplot(option)  # matplotlib is there, or the message says how to install it
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().removeprefix(".") not in formats:
        reason = f"matplotlib cannot write {out.suffix!r}" if out.suffix else "it has none"
        raise BottleneckError(f"{option} {out}: the suffix picks the picture's format and {reason}; use .png, "
                              f".svg or .pdf (matplotlib writes {', '.join(sorted(formats))})")


def _check_writable_folder(folder: Path, path: str, option: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BottleneckError(f"{option} {path}: {existing} is a file, so no folder can be made under it")
    try:  # a real file, not os.access: root passes every permission check, yet cannot write in /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise BottleneckError(f"{option} {path}: cannot write in {existing} ({error.strerror or error})") from None
