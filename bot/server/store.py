"""The server's durable state, in one SQLite file: deliveries seen, daily budget usage, switches.

A delivery is written (with its whole payload) before the server answers GitHub, and marked done after the
worker handled it. So a redelivery of a known `X-GitHub-Delivery` is answered without running again, and a
delivery accepted just before a crash is run by the next start instead of being lost.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from bot.server.webhooks import Event

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'done', 'failed')),
    event TEXT NOT NULL,
    received_at TEXT NOT NULL,
    finished_at TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS usage (
    day TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (day, kind)
);
CREATE TABLE IF NOT EXISTS flags (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def today() -> str:
    return utcnow().date().isoformat()


class Store:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # --- deliveries ------------------------------------------------------------------------------
    def add(self, event: Event) -> bool:
        """Record a delivery as queued; False when this delivery id was seen before (a redelivery)."""
        cur = self._exec(
            "INSERT OR IGNORE INTO deliveries (id, kind, state, event, received_at) VALUES (?, ?, 'queued', ?, ?)",
            (event.delivery_id, event.kind, event.to_json(), utcnow().isoformat(timespec="seconds")),
        )
        return cur.rowcount == 1

    def state(self, delivery_id: str) -> str | None:
        row = self._exec("SELECT state FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return row[0] if row else None

    def error(self, delivery_id: str) -> str | None:
        row = self._exec("SELECT error FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        return row[0] if row else None

    def pending(self) -> list[Event]:
        """Deliveries accepted but not handled yet (after a crash), oldest first."""
        rows = self._exec("SELECT event FROM deliveries WHERE state = 'queued' ORDER BY rowid").fetchall()
        return [Event.from_json(r[0]) for r in rows]

    def finish(self, delivery_id: str, error: str | None = None) -> None:
        self._exec(
            "UPDATE deliveries SET state = ?, error = ?, finished_at = ? WHERE id = ?",
            ("failed" if error else "done", error, utcnow().isoformat(timespec="seconds"), delivery_id),
        )

    def requeue(self, delivery_id: str) -> None:
        self._exec("UPDATE deliveries SET state = 'queued', error = NULL, finished_at = NULL WHERE id = ?", (delivery_id,))

    def counts(self) -> dict[str, int]:
        rows = self._exec("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        out = {"queued": 0, "done": 0, "failed": 0}
        out.update({state: n for state, n in rows})
        return out

    # --- daily usage -----------------------------------------------------------------------------
    def add_usage(self, kind: str, amount: float = 1.0, day: str | None = None) -> None:
        self._exec(
            "INSERT INTO usage (day, kind, amount) VALUES (?, ?, ?) "
            "ON CONFLICT (day, kind) DO UPDATE SET amount = amount + excluded.amount",
            (day or today(), kind, amount),
        )

    def usage(self, kind: str, day: str | None = None) -> float:
        row = self._exec("SELECT amount FROM usage WHERE day = ? AND kind = ?", (day or today(), kind)).fetchone()
        return row[0] if row else 0.0

    # --- switches --------------------------------------------------------------------------------
    def set_flag(self, key: str, value: str | None) -> None:
        if value is None:
            self._exec("DELETE FROM flags WHERE key = ?", (key,))
        else:
            self._exec("INSERT INTO flags (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       (key, value))

    def flag(self, key: str) -> str | None:
        row = self._exec("SELECT value FROM flags WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None


class Budget:
    """Daily caps on proposing (experiments, runner minutes), counted in the store by UTC day."""

    EXPERIMENTS = "experiments"
    RUNNER_MINUTES = "runner_minutes"

    def __init__(self, store: Store, experiments_per_day: int | None = None, runner_minutes_per_day: float | None = None):
        self.store = store
        self.experiments_per_day = experiments_per_day
        self.runner_minutes_per_day = runner_minutes_per_day

    def record_experiment(self) -> None:
        self.store.add_usage(self.EXPERIMENTS, 1)

    def record_runner_seconds(self, seconds: float) -> None:
        self.store.add_usage(self.RUNNER_MINUTES, seconds / 60.0)

    def exhausted(self) -> str | None:
        """Why proposing must stop today, or None while there is budget left."""
        used = self.store.usage(self.EXPERIMENTS)
        if self.experiments_per_day is not None and used >= self.experiments_per_day:
            return f"daily cap reached: {used:.0f} of {self.experiments_per_day} experiments today (UTC)"
        minutes = self.store.usage(self.RUNNER_MINUTES)
        if self.runner_minutes_per_day is not None and minutes >= self.runner_minutes_per_day:
            return f"daily cap reached: {minutes:.1f} of {self.runner_minutes_per_day:g} runner minutes today (UTC)"
        return None

    def state(self) -> dict:
        reason = self.exhausted()
        return {
            "day": today(),
            "experiments_today": int(self.store.usage(self.EXPERIMENTS)),
            "experiments_per_day": self.experiments_per_day,
            "runner_minutes_today": round(self.store.usage(self.RUNNER_MINUTES), 2),
            "runner_minutes_per_day": self.runner_minutes_per_day,
            "exhausted": reason is not None,
            "reason": reason,
        }
