"""Another server under the same source id: where its binlog continues the shipped history,
decided by GTID (exact transaction ids, server id included), never by names or positions."""

from __future__ import annotations

from backupkit.strategies.binlog.failover import locate_link


def _file(*gtids: str, start: int = 256) -> list[tuple[int, str, int, str]]:
    """A binlog file's listing: the header events, then one transaction per GTID."""
    out = [(4, "Format_desc", 256, ""), (256, "Gtid_list", 300, ""), (300, "Binlog_checkpoint", 340, "")]
    pos = 340
    for g in gtids:
        out += [(pos, "Gtid", pos + 42, f"BEGIN GTID {g}"), (pos + 42, "Write_rows_v1", pos + 100, ""),
                (pos + 100, "Xid", pos + 131, "COMMIT")]
        pos += 131
    return out


# the promoted replica: 0-1-1..5 replicated (binlog.000001), then 0-1-6..7 and its own 0-2-8..9
FILES = [("binlog.000001", ""), ("binlog.000002", "0-1-5")]
EVENTS = {"binlog.000001": _file(*(f"0-1-{i}" for i in range(1, 6))),
          "binlog.000002": _file("0-1-6", "0-1-7", "0-2-8", "0-2-9")}


def test_the_link_is_the_start_of_the_first_transaction_after_the_last_shipped_one():
    link = locate_link("0-1-7", FILES, EVENTS.__getitem__)
    assert link.ok and (link.file, link.pos) == ("binlog.000002", 340 + 2 * 131)
    link = locate_link("0-1-3", FILES, EVENTS.__getitem__)  # it starts in the file holding it
    assert link.ok and (link.file, link.pos) == ("binlog.000001", 340 + 3 * 131)
    link = locate_link("0-1-5", FILES, EVENTS.__getitem__)  # at a file's start: its first transaction
    assert (link.file, link.pos) == ("binlog.000002", 340)


def test_nothing_after_the_last_shipped_transaction_yet_links_at_the_end_of_the_binlog():
    link = locate_link("0-2-9", FILES, EVENTS.__getitem__)
    assert link.ok and (link.file, link.pos) == ("binlog.000002", 340 + 4 * 131)


def test_a_replica_that_was_behind_is_refused():
    link = locate_link("0-1-11", FILES, EVENTS.__getitem__)  # the old primary shipped 0-1-8..11 too
    assert not link.ok and "ends at 0-2-9, before the last shipped transaction 0-1-11" in link.problems[0]
    link = locate_link("0-1-8", FILES, EVENTS.__getitem__)  # its own 0-2-8 took 0-1-8's place
    assert not link.ok and "diverged" in link.problems[0] and "0-2-8" in link.problems[0]
    behind = {**EVENTS, "binlog.000002": _file("0-1-6")}
    link = locate_link("0-1-7", FILES, behind.__getitem__)
    assert not link.ok and "ends at 0-1-6, before the last shipped transaction 0-1-7" in link.problems[0]


def test_the_same_sequence_number_from_another_server_is_not_the_shipped_transaction():
    link = locate_link("0-3-8", FILES, EVENTS.__getitem__)  # 0-3-8 (shipped) != 0-2-8 (its own)
    assert not link.ok and "diverged" in link.problems[0]


def test_a_binlog_purged_past_the_link_point_is_refused():
    link = locate_link("0-1-3", [("binlog.000002", "0-1-5")], EVENTS.__getitem__)
    assert not link.ok and "0-1-4..5 are not in it" in link.problems[0]
    assert "purged" in link.verdict()


def test_no_gtid_position_to_link_by():
    assert not locate_link("", FILES, EVENTS.__getitem__).ok


def test_a_point_the_server_names_is_the_link_only_when_its_position_is_exactly_the_shipped_one():
    from backupkit.strategies.binlog.failover import _state_is

    assert _state_is("0-1-7", "0-1-7") and _state_is("0-1-7,1-3-9", "0-1-7")
    assert not _state_is("0-2-7", "0-1-7")  # the same sequence number from another server
    assert not _state_is("0-1-8", "0-1-7") and not _state_is("", "0-1-7") and not _state_is("0-1-7", "")


def test_a_replica_that_did_not_log_what_it_replicated_is_named_so():
    own = {"binlog.000001": _file("0-2-21", "0-2-22")}  # log_slave_updates=OFF: only its own writes
    link = locate_link("0-1-20", [("binlog.000001", "")], own.__getitem__)
    assert not link.ok and "log_slave_updates=OFF" in link.problems[0]
