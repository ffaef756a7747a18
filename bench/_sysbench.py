"""The sysbench-like tables the datadir benches (cold, physical) build in a private server."""

from __future__ import annotations

from backupkit.mysql.sandbox import Sandbox

#: Server options of the benches' private servers: room for a 1 GB table, fast commits.
SERVER_ARGS = ["--innodb-buffer-pool-size=512M", "--innodb-log-file-size=256M",
               "--innodb-flush-log-at-trx-commit=2"]


def _digits(n: int) -> str:
    """SQL for sysbench-like groups of 11 random digits joined by '-'."""
    part = "LPAD(FLOOR(RAND() * 100000000000), 11, '0')"
    return "CONCAT(" + ", '-', ".join([part] * n) + ")"


def build(sb: Sandbox, rows: int, tables: int = 1, log_bin: bool = True, step: int = 200_000) -> None:
    """Tables sbtest.sbtest1..N of `rows` rows each, generated in the server `step` rows per
    statement (log_bin False: not written to the binlog)."""
    sb.sql("CREATE DATABASE sbtest")
    conn = sb.connect(database="sbtest")
    try:
        with conn.cursor() as cur:
            if not log_bin:
                cur.execute("SET SESSION sql_log_bin = 0")
            for i in range(1, tables + 1):
                cur.execute(f"CREATE TABLE sbtest{i} (id INT NOT NULL PRIMARY KEY, k INT NOT NULL, "
                            f"c CHAR(120) NOT NULL, pad CHAR(60) NOT NULL, KEY k_1 (k)) ENGINE=InnoDB")
                for lo in range(1, rows + 1, step):
                    hi = min(rows, lo + step - 1)
                    cur.execute(f"INSERT INTO sbtest{i} SELECT seq, FLOOR(RAND(seq) * {rows}), "
                                f"{_digits(10)}, {_digits(5)} FROM seq_{lo}_to_{hi}")
    finally:
        conn.close()
