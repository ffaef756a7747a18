"""Which session the lock watchdog names as the blocker."""

from __future__ import annotations

from backupkit.strategies.snapshot.watchdog import find_blocker


class _Cursor:
    def __init__(self, rows):
        self.rows = rows

    def execute(self, sql, args=None):
        pass

    def fetchall(self):
        return self.rows


ROWS = [
    (7, "root", "Sleep", 3, "", ""),  # LOCK TABLES ... WRITE, idle since before the wait
    (9, "app", "Query", 0, "Updating", "UPDATE app.hot SET v = v + 1 WHERE id = 40"),  # a busy writer
    (11, "app", "Query", 1, "Waiting for backup lock", "INSERT INTO t VALUES (1)"),  # queued behind us
    (3, "system user", "Daemon", 100, "", ""),
    (5, "root", "Query", 0, "starting", "KILL QUERY 4"),  # ours
]


def test_a_busy_writers_short_statement_is_not_taken_for_the_holder():
    b = find_blocker(_Cursor(ROWS), exclude={5}, waited=1.0)
    assert b is not None and b.id == 7 and "idle for 3 s" in b.describe()


def test_a_long_running_statement_is_preferred_to_an_idle_session():
    rows = [*ROWS, (12, "dba", "Query", 4, "altering table", "ALTER TABLE big ADD COLUMN z INT")]
    b = find_blocker(_Cursor(rows), exclude={5}, waited=1.0)
    assert b is not None and b.id == 12 and "ALTER TABLE big" in b.describe()


def test_with_nobody_old_enough_the_best_guess_is_still_given():
    b = find_blocker(_Cursor(ROWS[1:]), exclude={5}, waited=1.0)
    assert b is not None and b.id == 9
