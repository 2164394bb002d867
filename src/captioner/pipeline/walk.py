"""Walk the pipeline's inputs: every regular file under the given files and folders, or the
reason an entry was not walked.

Folders are walked recursively in sorted order (so every run, and every torchrun rank, sees
the same list). Symbolic links are followed; a link back into a folder already walked (a
symlink loop: reported, not a failure, as its files are walked once anyway), a link to itself,
a broken link, a folder that cannot be listed and anything that is not a regular file (FIFOs,
sockets, devices: opening a FIFO would block the run) are reported with their reason instead.
A path given twice is listed once; a file under two names (a copy, or a link to a file) is two
files, the second recorded as the same content as the first.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WalkedFile:
    """A regular file to process, with the size and modification time the walk saw."""

    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class NotWalked:
    """An entry the walk did not follow, and why; ``failure`` is False for what is left out
    on purpose (the catalogue's own folder, a folder reached twice)."""

    path: Path
    reason: str
    failure: bool = True


@dataclass
class Walk:
    files: list[WalkedFile] = field(default_factory=list)
    not_walked: list[NotWalked] = field(default_factory=list)

    def add(self, path: Path, reason: str, failure: bool = True) -> None:
        self.not_walked.append(NotWalked(path, reason, failure))


def display_path(path: str | Path) -> str:
    """The text a path is stored and shown as: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def walk_inputs(inputs: Sequence[str | Path], exclude: Iterable[str | Path] = ()) -> Walk:
    """The regular files under ``inputs`` (absolute paths, links kept as named) and what was
    not walked. ``exclude``: folders left out (the catalogue's own folder)."""
    walk = Walk()
    excluded = {_key(Path(p)) for p in exclude if Path(p).exists()}
    seen_files: set[str] = set()
    walked_dirs: dict[tuple[int, int], Path] = {}
    for item in inputs:
        path = Path(os.path.abspath(item))
        _visit(path, walk, seen_files, walked_dirs, excluded)
    return walk


def _key(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def _visit(
    path: Path,
    walk: Walk,
    seen_files: set[str],
    walked_dirs: dict[tuple[int, int], Path],
    excluded: set[tuple[int, int]],
) -> None:
    try:
        info = path.stat()  # follows links
    except FileNotFoundError:
        if path.is_symlink():
            walk.add(path, "broken symbolic link (its target does not exist)")
        else:
            walk.add(path, "no such file or folder")
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            walk.add(path, "symbolic link loop (too many levels of links)")
        elif isinstance(exc, PermissionError):
            walk.add(path, "permission denied (cannot look it up)")
        else:
            walk.add(path, f"cannot look it up ({exc.strerror or exc})")
        return
    if stat.S_ISDIR(info.st_mode):
        key = (info.st_dev, info.st_ino)
        if key in excluded:
            walk.add(path, "the catalogue's own folder (not walked)", failure=False)
            return
        if key in walked_dirs:
            first = walked_dirs[key]
            reason = (
                f"symbolic link loop (links back to {display_path(first)}, already walked)"
                if path.is_symlink()
                else f"folder already walked (as {display_path(first)})"
            )
            walk.add(path, reason, failure=False)  # its files are walked once, nothing lost
            return
        walked_dirs[key] = path
        try:
            with os.scandir(path) as entries:
                names = sorted(entry.name for entry in entries)
        except PermissionError:
            walk.add(path, "permission denied (folder cannot be listed)")
            return
        except OSError as exc:
            walk.add(path, f"folder cannot be listed ({exc.strerror or exc})")
            return
        for name in names:
            _visit(path / name, walk, seen_files, walked_dirs, excluded)
        return
    if not stat.S_ISREG(info.st_mode):
        walk.add(path, f"not a regular file ({_kind_of(info.st_mode)})")
        return
    name = str(path)
    if name in seen_files:
        return
    seen_files.add(name)
    walk.files.append(WalkedFile(path, info.st_size, info.st_mtime_ns))


def _kind_of(mode: int) -> str:
    for test, what in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return "unknown file type"
