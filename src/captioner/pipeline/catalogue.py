"""The catalogue: one SQLite file (``DIR/catalogue.sqlite``) with a row per input file.

Rows are written a batch at a time, each batch in one transaction, so a killed run leaves
whole batches and never half a row. ``meta`` records the models and settings the catalogue was
made with (its *signature*); a catalogue is never filled with another signature's results: it
is refused, or moved aside for a new one. Captions are indexed by FTS5 (an external-content
table kept in step by triggers) and searched ranked by bm25.

Under ``torchrun`` each rank writes its own shard (``catalogue.rank{r}of{w}.sqlite``, same
schema) and rank 0 folds the shards into the catalogue; a killed sharded run leaves its
shards, which the next run folds in first, so nothing finished is done again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError
from captioner.fileio import _remove_orphaned_temporaries, atomic_write_bytes

FORMAT = "captioner-catalogue"
VERSION = 1
FILE = "catalogue.sqlite"
SHARD_PATTERN = re.compile(r"catalogue\.rank(\d+)of(\d+)\.sqlite")

#: The columns of ``files``, in order, with their SQL types. ``TIMING_COLUMNS`` are the only
#: ones that differ between two runs over the same files with the same models.
COLUMNS: dict[str, str] = {
    "path": "TEXT PRIMARY KEY",
    "sha256": "TEXT",
    "size": "INTEGER",
    "mtime_ns": "INTEGER",
    "width": "INTEGER",
    "height": "INTEGER",
    "kind": "TEXT",
    "probability": "REAL",
    "photo_probability": "REAL",
    "probabilities": "TEXT",
    "captioned": "INTEGER NOT NULL DEFAULT 0",
    "denoised": "INTEGER NOT NULL DEFAULT 0",
    "denoised_path": "TEXT",
    "caption": "TEXT",
    "caption_score": "REAL",
    "caption_log_prob": "REAL",
    "thumbnail": "TEXT",
    "denoised_thumbnail": "TEXT",
    "attention_path": "TEXT",
    "classifier_id": "TEXT",
    "denoiser_id": "TEXT",
    "captioner_id": "TEXT",
    "same_as": "TEXT",
    "error": "TEXT",
    "decode_ms": "REAL",
    "classify_ms": "REAL",
    "denoise_ms": "REAL",
    "caption_ms": "REAL",
}
TIMING_COLUMNS = ("decode_ms", "classify_ms", "denoise_ms", "caption_ms")
_NAMES = list(COLUMNS)
_DEFAULTS = {"captioned": 0, "denoised": 0}

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files ({", ".join(f"{k} {v}" for k, v in COLUMNS.items())});
CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256);
CREATE TABLE IF NOT EXISTS not_walked (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS captions USING fts5(
    caption, content='files', content_rowid='rowid',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS files_ai AFTER INSERT ON files BEGIN
    INSERT INTO captions(rowid, caption) VALUES (new.rowid, new.caption);
END;
CREATE TRIGGER IF NOT EXISTS files_ad AFTER DELETE ON files BEGIN
    INSERT INTO captions(captions, rowid, caption) VALUES ('delete', old.rowid, old.caption);
END;
CREATE TRIGGER IF NOT EXISTS files_au AFTER UPDATE ON files BEGIN
    INSERT INTO captions(captions, rowid, caption) VALUES ('delete', old.rowid, old.caption);
    INSERT INTO captions(rowid, caption) VALUES (new.rowid, new.caption);
END;
"""

_UPSERT = (
    f"INSERT INTO files ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))}) "
    f"ON CONFLICT(path) DO UPDATE SET " + ", ".join(f"{k} = excluded.{k}" for k in _NAMES[1:])
)


@dataclass(frozen=True)
class StoredState:
    """What a re-run needs to know about a stored row to decide whether to redo the file."""

    size: int | None
    mtime_ns: int | None
    sha256: str | None
    error: str | None
    captioned: bool
    denoised: bool
    denoised_path: str | None
    attention_path: str | None


@dataclass(frozen=True)
class SearchHit:
    rank: int
    score: float  # bm25 (lower is better, as SQLite gives it), negated: higher is better
    path: str
    kind: str | None
    caption: str
    caption_score: float | None


def describe_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``"captioner abc123 -> def456, beam_size 3 -> 1"`` for the keys that differ."""
    parts = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if a != b:
            parts.append(f"{key} {_short(a)} -> {_short(b)}")
    return ", ".join(parts)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


class Catalogue:
    """One open catalogue (or shard) database."""

    def __init__(self, path: Path, connection: sqlite3.Connection, readonly: bool) -> None:
        self.path = path
        self.db = connection
        self.readonly = readonly

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        path: str | Path,
        signature: dict[str, Any] | None = None,
        *,
        create: bool = True,
        readonly: bool = False,
    ) -> Catalogue:
        """Open (or create) the database at ``path``; refuse one of another signature.

        ``path`` may be the catalogue folder (``DIR/catalogue.sqlite`` is opened). A new
        database needs the ``signature`` it records.
        """
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / FILE
        exists = path.is_file()
        if not exists and (readonly or not create):
            raise CaptionerError(f"{path}: no catalogue here (run `captioner pipeline` first)")
        if not exists:
            if signature is None:
                raise CaptionerError(f"{path}: a new catalogue needs the models' signature")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not exists:
                _create(path, signature or {})
            if readonly:
                uri = f"file:{path.resolve()}?mode=ro"
                db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
            else:
                db = sqlite3.connect(path, timeout=60, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 60000")
            if not readonly:
                db.execute("PRAGMA synchronous = FULL")
            catalogue = cls(path, db, readonly)
            catalogue._check_format()
        except sqlite3.DatabaseError as exc:
            raise CaptionerError(f"{path}: not a readable catalogue ({exc})") from None
        if signature is not None:
            stored = catalogue.signature
            if stored != signature:
                catalogue.close()
                raise CaptionerError(
                    f"{path}: this catalogue was made with other models or settings "
                    f"({describe_differences(stored, signature)}); pass another --out, or "
                    "--new-catalogue to keep it aside and start a new one"
                )
        return catalogue

    def _check_format(self) -> None:
        try:
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            raise CaptionerError(f"{self.path}: not a captioner catalogue") from None
        if json.loads(meta.get("format", "null")) != FORMAT:
            raise CaptionerError(f"{self.path}: not a captioner catalogue")
        if json.loads(meta.get("version", "null")) != VERSION:
            raise CaptionerError(
                f"{self.path}: unsupported catalogue version {meta.get('version')}"
            )
        self._meta = {k: json.loads(v) for k, v in meta.items()}

    @property
    def signature(self) -> dict[str, Any]:
        return dict(self._meta.get("signature") or {})

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # ------------------------------------------------------------------ rows
    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace ``rows`` (dicts keyed by column; missing keys are NULL), all in
        one transaction."""
        values = [
            tuple(_sql_value(row.get(name, _DEFAULTS.get(name))) for name in _NAMES) for row in rows
        ]
        with self.transaction():
            self.db.executemany(_UPSERT, values)

    def set_not_walked(self, entries: Iterable[tuple[str, str]]) -> None:
        """Replace the list of what the last run could not walk."""
        with self.transaction():
            self.db.execute("DELETE FROM not_walked")
            self.db.executemany(
                "INSERT OR REPLACE INTO not_walked (path, reason) VALUES (?, ?)", list(entries)
            )

    def not_walked(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT path, reason FROM not_walked ORDER BY path").fetchall()

    def states(self, paths: Sequence[str]) -> dict[str, StoredState]:
        """The stored state of each of ``paths`` that has a row."""
        out: dict[str, StoredState] = {}
        for start in range(0, len(paths), 500):
            chunk = list(paths[start : start + 500])
            query = (
                "SELECT path, size, mtime_ns, sha256, error, captioned, denoised, "
                "denoised_path, attention_path FROM files WHERE path IN "
                f"({', '.join('?' * len(chunk))})"
            )
            for row in self.db.execute(query, chunk):
                out[row[0]] = StoredState(
                    row[1], row[2], row[3], row[4], bool(row[5]), bool(row[6]), row[7], row[8]
                )
        return out

    def row(self, path: str) -> dict[str, Any] | None:
        cursor = self.db.execute(f"SELECT {', '.join(_NAMES)} FROM files WHERE path = ?", (path,))
        found = cursor.fetchone()
        return dict(zip(_NAMES, found, strict=True)) if found else None

    def row_by_hash(self, sha256: str) -> dict[str, Any] | None:
        """The first finished (error-free) row of this content, or None."""
        cursor = self.db.execute(
            f"SELECT {', '.join(_NAMES)} FROM files WHERE sha256 = ? AND error IS NULL "
            "ORDER BY path LIMIT 1",
            (sha256,),
        )
        found = cursor.fetchone()
        return dict(zip(_NAMES, found, strict=True)) if found else None

    def rows(self, where: str = "", params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        """Every row (ordered by path), probabilities decoded from JSON."""
        cursor = self.db.execute(
            f"SELECT {', '.join(_NAMES)} FROM files {where} ORDER BY path", tuple(params)
        )
        for values in cursor:
            row = dict(zip(_NAMES, values, strict=True))
            if row["probabilities"] is not None:
                row["probabilities"] = json.loads(row["probabilities"])
            row["captioned"] = bool(row["captioned"])
            row["denoised"] = bool(row["denoised"])
            yield row

    def count(self, where: str = "", params: Sequence[Any] = ()) -> int:
        return int(self.db.execute(f"SELECT COUNT(*) FROM files {where}", params).fetchone()[0])

    # ------------------------------------------------------------------ search
    def search(
        self, query: str, limit: int = 20, kind: str | None = None, all_words: bool = False
    ) -> list[SearchHit]:
        """Captions matching ``query``, best first (bm25). Any word may match unless
        ``all_words``; more matching words and rarer words rank higher."""
        expression = fts_query(query, all_words)
        if expression is None:
            return []
        sql = (
            "SELECT f.path, f.kind, f.caption, f.caption_score, bm25(captions) AS rank "
            "FROM captions JOIN files AS f ON f.rowid = captions.rowid "
            "WHERE captions MATCH ?"
        )
        params: list[Any] = [expression]
        if kind is not None:
            sql += " AND f.kind = ?"
            params.append(kind)
        sql += " ORDER BY rank, f.path LIMIT ?"
        params.append(int(limit))
        try:
            found = self.db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise CaptionerError(f"{self.path}: cannot search for {query!r} ({exc})") from None
        return [
            SearchHit(i + 1, -float(rank), path, kind_, caption, score)
            for i, (path, kind_, caption, score, rank) in enumerate(found)
        ]

    # ------------------------------------------------------------------ shards
    def merge_shards(self, folder: Path | None = None) -> int:
        """Fold every ``catalogue.rank*of*.sqlite`` beside this catalogue into it (shards of
        another signature are refused); delete them; return how many were merged."""
        folder = folder or self.path.parent
        shards = sorted(p for p in folder.iterdir() if SHARD_PATTERN.fullmatch(p.name))
        for shard in shards:
            with Catalogue.open(shard, create=False) as other:
                if other.signature != self.signature:
                    raise CaptionerError(
                        f"{shard}: a shard of a run with other models or settings "
                        f"({describe_differences(self.signature, other.signature)}); "
                        "move it away to continue"
                    )
            self.db.execute("ATTACH DATABASE ? AS shard", (str(shard),))
            try:
                with self.transaction():
                    self.db.execute(
                        f"INSERT INTO files ({', '.join(_NAMES)}) "
                        f"SELECT {', '.join(_NAMES)} FROM shard.files WHERE true "
                        "ON CONFLICT(path) DO UPDATE SET "
                        + ", ".join(f"{k} = excluded.{k}" for k in _NAMES[1:])
                    )
            finally:
                self.db.execute("DETACH DATABASE shard")
            shard.unlink()
            Path(str(shard) + "-journal").unlink(missing_ok=True)
        return len(shards)

    # ------------------------------------------------------------------ export
    def export_jsonl(self, path: Path, timings: bool = True) -> int:
        """One JSON object per row (ordered by path); return the number of rows."""
        lines = []
        for row in self.rows():
            if not timings:
                for key in TIMING_COLUMNS:
                    row.pop(key)
            lines.append(json.dumps(row, ensure_ascii=False, sort_keys=False))
        atomic_write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
        return len(lines)

    def export_csv(self, path: Path) -> int:
        """One CSV line per row; the probabilities become one ``p_<class>`` column each."""
        rows = list(self.rows())
        classes = sorted({c for row in rows for c in (row["probabilities"] or {})})
        names = [n for n in _NAMES if n != "probabilities"]
        names[names.index("photo_probability") + 1 : names.index("photo_probability") + 1] = [
            f"p_{c}" for c in classes
        ]
        stream = io.StringIO()
        writer = csv.DictWriter(stream, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            probabilities = row.pop("probabilities") or {}
            writer.writerow({**row, **{f"p_{c}": probabilities.get(c) for c in classes}})
        atomic_write_bytes(path, stream.getvalue().encode("utf-8"))
        return len(rows)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, *exc: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _create(path: Path, signature: dict[str, Any]) -> None:
    """Write a new, empty catalogue under a temporary name, then rename it into place: a
    killed run never leaves a catalogue without its format and signature."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    db = sqlite3.connect(temporary, isolation_level=None)
    try:
        db.executescript(_SCHEMA)
        db.execute("PRAGMA journal_mode = DELETE")
        with _Transaction(db):
            for key, value in (("format", FORMAT), ("version", VERSION), ("signature", signature)):
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (key, json.dumps(value, sort_keys=True)),
                )
    finally:
        db.close()
    os.replace(temporary, path)
    _remove_orphaned_temporaries(path)  # left by runs killed while creating it


def shard_path(folder: Path, rank: int, world: int) -> Path:
    return folder / f"catalogue.rank{rank}of{world}.sqlite"


def set_aside(folder: Path) -> Path | None:
    """Rename ``DIR/catalogue.sqlite`` (and its shards) to the first free
    ``catalogue-N.sqlite`` (``catalogue-N.rank*.sqlite``); return the new name."""
    current = folder / FILE
    if not current.exists():
        return None
    n = 1
    while (folder / f"catalogue-{n}.sqlite").exists():
        n += 1
    target = folder / f"catalogue-{n}.sqlite"
    for shard in folder.iterdir():
        match = SHARD_PATTERN.fullmatch(shard.name)
        if match:
            os.replace(shard, folder / f"catalogue-{n}.rank{match[1]}of{match[2]}.sqlite")
    os.replace(current, target)
    return target


def _sql_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return int(value)
    return value


_WORD = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str, all_words: bool = False) -> str | None:
    """An FTS5 expression for free text: each word quoted (FTS5 syntax characters in the
    text lose their meaning), joined by OR (or AND with ``all_words``); None without words."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text))
    if not words:
        return None
    joiner = " AND " if all_words else " OR "
    return joiner.join(f'"{word}"' for word in dict.fromkeys(w.lower() for w in words))
