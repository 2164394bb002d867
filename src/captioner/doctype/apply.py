"""Sort files into one folder per kind: copy or move, never overwriting.

A copy is written to a temporary name and renamed, so a killed run leaves no half-written
file; a file whose identical copy is already in its kind's folder is not copied again, so a
re-run after a kill sorts only what was left. A name already taken by other content gets a
``-1``, ``-2`` ... suffix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from captioner.fileio import sha256_file


def sort_file(source: Path, target_dir: Path, move: bool) -> tuple[Path, bool]:
    """Copy or move ``source`` into ``target_dir``; return (where it is, whether it was done
    now: False when an identical file was already there)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    digest: str | None = None
    stem, suffix = source.stem, source.suffix
    for n in range(10_000):
        target = target_dir / (source.name if n == 0 else f"{stem}-{n}{suffix}")
        if not target.exists():
            break
        if target.stat().st_size == source.stat().st_size:
            digest = digest or sha256_file(source)
            if sha256_file(target) == digest:
                if move and target.resolve() != source.resolve():
                    source.unlink()
                return target, False
    else:  # pragma: no cover - ten thousand files of one name
        raise FileExistsError(f"{target_dir}: no free name for {source.name}")
    if move:
        try:
            os.link(source, target)  # fails if it exists: never overwrites
            source.unlink()
            return target, True
        except OSError:
            pass  # another file system, or no hard links: copy then remove
    temporary = target_dir / f".{target.name}.{os.getpid()}.part"
    shutil.copy2(source, temporary)
    try:
        os.link(temporary, target)  # atomic, and refuses to replace a file that appeared
    except FileExistsError:
        temporary.unlink(missing_ok=True)
        return sort_file(source, target_dir, move)
    except OSError:
        os.replace(temporary, target)
    temporary.unlink(missing_ok=True)
    if move:
        source.unlink()
    return target, True
