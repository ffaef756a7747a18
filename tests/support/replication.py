"""A primary and its replica (two private mariadbd with GTID replication): start, wait, promote."""

from __future__ import annotations


def replicate(primary, replica) -> None:
    """replica replicates from primary by GTID (from its gtid_slave_pos)."""
    replica.sql(f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, "
                "MASTER_USER='root', MASTER_USE_GTID=slave_pos")
    replica.sql("START SLAVE")


def caught_up(primary, replica) -> bool:
    return replica.sql("SELECT @@gtid_slave_pos")[0][0] == primary.sql("SELECT @@gtid_binlog_pos")[0][0]


def promote(replica) -> None:
    """The replica stops replicating and forgets its primary (a switchover's last step)."""
    replica.sql("STOP SLAVE")
    replica.sql("RESET SLAVE ALL")
