"""The platform's durable state: one SQLite database under ``--home``.

Every resource (model, endpoint config, endpoint, training job, and whatever kinds extensions add, e.g.
transform jobs) is a row of ``resources`` keyed by ``(kind, lower-cased name)`` holding its Describe
document as JSON; tags live in ``tags`` keyed by ARN; ``instances`` mirrors the running model servers so
``selfmaker status`` can show them. The store is used from the event loop and from job threads, so every
call takes a lock; WAL mode lets ``selfmaker status`` read while ``selfmaker up`` writes.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL, arn TEXT NOT NULL,
    status TEXT, created REAL NOT NULL, modified REAL NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS resources_arn ON resources (arn);
CREATE TABLE IF NOT EXISTS tags (
    arn TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (arn, key)
);
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, variant TEXT NOT NULL, url TEXT,
    pid INTEGER, status TEXT NOT NULL, started REAL NOT NULL, log_path TEXT
);
"""


def now() -> float:
    """The current time as epoch seconds with millisecond precision (what SageMaker returns; it
    survives boto3's datetime round trip exactly, so time filters compare as the caller expects)."""
    return round(time.time(), 3)


@dataclass
class Record:
    """One stored resource: its identity, status, times and Describe document."""

    kind: str
    name: str
    arn: str
    status: str | None
    created: float
    modified: float
    doc: dict[str, Any] = field(default_factory=dict)


class StateStore:
    """Thread-safe access to the SQLite state database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        # owner-only: the store holds Model Environment values; SQLite gives its -wal and -shm files the
        # database file's mode, so creating it 0600 first covers all three
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if part.exists():
                os.chmod(part, 0o600)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the store's lock."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- resources -----------------------------------------------------------------------------

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Record:
        kind, name, arn, status, created, modified, doc = row
        return Record(kind, name, arn, status, created, modified, json.loads(doc))

    _COLS = "kind, name, arn, status, created, modified, doc"

    def get(self, kind: str, name: str) -> Record | None:
        """The resource ``name`` of ``kind`` (names compare case-insensitively), or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {self._COLS} FROM resources WHERE kind=? AND key=?", (kind, name.lower())
            ).fetchone()
        return self._row(row) if row else None

    def get_by_arn(self, arn: str) -> Record | None:
        """The resource whose ARN is ``arn``, or None."""
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLS} FROM resources WHERE arn=?", (arn,)).fetchone()
        return self._row(row) if row else None

    def insert(self, record: Record) -> bool:
        """Store a new resource; False (and nothing written) when the name is taken."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO resources (kind, key, name, arn, status, created, modified, doc)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.kind,
                        record.name.lower(),
                        record.name,
                        record.arn,
                        record.status,
                        record.created,
                        record.modified,
                        json.dumps(record.doc),
                    ),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def update(
        self,
        kind: str,
        name: str,
        *,
        status: str | None = None,
        doc: dict[str, Any] | None = None,
        merge: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        touch: bool = True,
    ) -> Record | None:
        """Change a resource's status and/or document (``merge`` updates keys, ``drop`` removes keys).

        Returns the stored record, or None when it does not exist.
        """
        with self.transaction() as db:
            row = db.execute(
                f"SELECT {self._COLS} FROM resources WHERE kind=? AND key=?", (kind, name.lower())
            ).fetchone()
            if row is None:
                return None
            record = self._row(row)
            if doc is not None:
                record.doc = dict(doc)
            if merge:
                record.doc.update(merge)
            for key in drop:
                record.doc.pop(key, None)
            if status is not None:
                record.status = status
            if touch:
                record.modified = now()
            db.execute(
                "UPDATE resources SET status=?, modified=?, doc=? WHERE kind=? AND key=?",
                (record.status, record.modified, json.dumps(record.doc), kind, name.lower()),
            )
        return record

    def delete(self, kind: str, name: str) -> bool:
        """Remove a resource and its tags; False when it did not exist."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT arn FROM resources WHERE kind=? AND key=?", (kind, name.lower())
            ).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM resources WHERE kind=? AND key=?", (kind, name.lower()))
            db.execute("DELETE FROM tags WHERE arn=?", (row[0],))
        return True

    def list(self, kind: str, status: str | None = None) -> list[Record]:
        """Every resource of ``kind`` (optionally with that status), oldest first."""
        query = f"SELECT {self._COLS} FROM resources WHERE kind=?"
        args: tuple[Any, ...] = (kind,)
        if status is not None:
            query += " AND status=?"
            args += (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created, name", args).fetchall()
        return [self._row(row) for row in rows]

    def count_by_status(self, kind: str) -> dict[str, int]:
        """``{status: number of resources of kind}`` (``/metrics``: one query, no documents read)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM resources WHERE kind=? GROUP BY status", (kind,)
            ).fetchall()
        return {str(status): int(count) for status, count in rows if status is not None}

    # ---- tags ------------------------------------------------------------------------------------

    def add_tags(self, arn: str, tags: builtins.list[dict[str, str]]) -> None:
        """Add or overwrite tags of ``arn``."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO tags (arn, key, value) VALUES (?, ?, ?)",
                [(arn, tag["Key"], tag.get("Value", "")) for tag in tags],
            )

    def tags(self, arn: str) -> builtins.list[dict[str, str]]:
        """Tags of ``arn`` sorted by key."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM tags WHERE arn=? ORDER BY key", (arn,)).fetchall()
        return [{"Key": key, "Value": value} for key, value in rows]

    def delete_tags(self, arn: str, keys: builtins.list[str]) -> None:
        """Remove the tags named ``keys`` from ``arn`` (absent keys are ignored)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM tags WHERE arn=? AND key=?", [(arn, key) for key in keys])

    # ---- instances (observability only; the router keeps the live view in memory) ----------------

    def put_instance(
        self,
        instance_id: str,
        endpoint: str,
        variant: str,
        *,
        url: str | None,
        pid: int | None,
        status: str,
        log_path: str | None,
    ) -> None:
        """Record or update one model-server instance."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO instances"
                " (instance_id, endpoint, variant, url, pid, status, started, log_path)"
                " VALUES (?, ?, ?, ?, ?, ?,"
                " COALESCE((SELECT started FROM instances WHERE instance_id=?), ?), ?)",
                (instance_id, endpoint, variant, url, pid, status, instance_id, now(), log_path),
            )

    def remove_instance(self, instance_id: str) -> None:
        """Forget a stopped instance."""
        with self.transaction() as db:
            db.execute("DELETE FROM instances WHERE instance_id=?", (instance_id,))

    def clear_instances(self) -> None:
        """Forget every instance (at start-up nothing of a previous run is alive)."""
        with self.transaction() as db:
            db.execute("DELETE FROM instances")

    def instances(self) -> builtins.list[dict[str, Any]]:
        """Every recorded instance, by endpoint and variant."""
        with self._lock:
            rows = self._db.execute(
                "SELECT instance_id, endpoint, variant, url, pid, status, started, log_path FROM instances"
                " ORDER BY endpoint, variant, instance_id"
            ).fetchall()
        keys = ("InstanceId", "EndpointName", "VariantName", "Url", "Pid", "Status", "StartTime", "LogPath")
        return [dict(zip(keys, row, strict=True)) for row in rows]
