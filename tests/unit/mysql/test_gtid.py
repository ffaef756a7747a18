"""THE GTID model (backupkit.mysql.gtid): single GTIDs, MariaDB positions, MySQL sets, and the
edge cases the three models it replaced handled (shipper state, restore positions, cold .state)."""

from __future__ import annotations

import pytest

from backupkit.errors import UsageError
from backupkit.mysql.gtid import GtidSet, normalize_gtid, parse_gtid, try_parse_gtid

SID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def test_gtids_of_both_flavors():
    g = parse_gtid("0-1-123")
    assert (g.key, g.server, g.seq, g.mariadb) == ("0", "1", 123, True)
    m = parse_gtid("3E11FA47-71CA-11E1-9E33-C80AA9429562:23")
    assert (m.key, m.seq, m.mariadb) == (SID, 23, False)
    assert str(m) == "3E11FA47-71CA-11E1-9E33-C80AA9429562:23"  # the text as given
    assert parse_gtid(f"{SID}:tag_1:5").key == SID  # a MySQL tag is read as its uuid
    assert parse_gtid("007-1-5").key == "7"
    for bad in ("0-1", "a-1-2", "0-1-2-3", f"{SID}", f"{SID}:x", ""):
        with pytest.raises(UsageError):
            parse_gtid(bad)
    assert try_parse_gtid("") is None and try_parse_gtid("junk") is None
    assert try_parse_gtid("0-1-2") == parse_gtid("0-1-2")


def test_mariadb_positions_contain_by_domain_and_seq():
    pos = GtidSet.parse("0-1-100,1-2-7")
    assert pos.contains(parse_gtid("0-1-100")) and pos.contains(parse_gtid("0-5-3"))  # any server
    assert not pos.contains(parse_gtid("0-1-101")) and not pos.contains(parse_gtid("2-1-1"))
    assert pos.last_seq("1") == 7 and pos.last_seq("9") == 0
    assert GtidSet.parse("").intervals == {} and not GtidSet.parse("") and GtidSet.parse("").text() == ""
    assert not GtidSet.parse("0-1-0").contains(parse_gtid("0-1-0"))
    assert GtidSet.parse(" 0-1-5 ,\n1-1-2,").text() == "0-1-5,1-1-2"


def test_mysql_sets_contain_by_interval_and_merge():
    s = GtidSet.parse(f"{SID.upper()}:1-5:7")
    assert s.contains(parse_gtid(f"{SID}:7")) and not s.contains(parse_gtid(f"{SID}:6"))
    assert s.last_seq(SID) == 7 and s.text() == f"{SID}:1-5:7"
    assert GtidSet.parse(f"{SID}:7:1-3:2-5").text() == f"{SID}:1-5:7"  # sorted and merged
    assert GtidSet.parse(f"{SID}:1-x").text() == f"{SID}:1"  # a bad upper bound: the lower one
    assert GtidSet.parse(f"{SID}:tag:1-3").text() == f"{SID}:1-3"
    two = GtidSet.parse(f"ffffffff-71ca-11e1-9e33-c80aa9429562:4,{SID}:1")
    assert two.text() == f"{SID}:1,ffffffff-71ca-11e1-9e33-c80aa9429562:4"  # uuids in order


def test_strict_parse_names_the_text_and_lenient_parse_skips():
    for bad in ("0-1", "x", "nouuid:1-5", "0-1-2-3"):
        with pytest.raises(UsageError, match="cannot read the GTID position"):
            GtidSet.parse(f"0-1-5,{bad}")
        assert GtidSet.parse(f"0-1-5,{bad}", strict=False).text() == "0-1-5"


def test_mariadb_state_moves_each_domain_to_its_last_transaction():
    st = GtidSet.parse("0-1-10,1-2-5", strict=False)
    st.add("0-1-11")
    st.add("2-3-1")
    assert st.text() == "0-1-11,1-2-5,2-3-1"
    st.add("0-4-3")  # a position names the last transaction, even a lower seq of another server
    assert st.text() == "0-4-3,1-2-5,2-3-1"
    st.set_domains([(0, 1, 20)])  # a GTID list event: the whole position
    assert st.text() == "0-1-20"
    assert GtidSet.parse("0-1-5,0-2-3").text() == "0-2-3"  # a later entry of a domain wins
    st.add("")  # a transaction without a GTID
    assert st.text() == "0-1-20"
    with pytest.raises(UsageError):
        st.add("0-1")


def test_mysql_state_gains_each_transaction():
    st = GtidSet.parse(f"{SID}:1-5:7", strict=False)
    st.add(f"{SID}:6")
    st.add(f"{SID}:9")
    assert st.text() == f"{SID}:1-7:9"
    st.add(f"{SID}:10")
    st.add(f"{SID}:3")  # already held
    assert st.text() == f"{SID}:1-7:9-10"
    cp = st.copy()
    cp.add(f"{SID}:8")
    assert st.text() == f"{SID}:1-7:9-10" and cp.text() == f"{SID}:1-10" and cp != st


def test_state_file_gives_the_last_gtid_of_each_domain():
    text = "1-1-4\n0-1-7\n0-2-9\n\n  2-1-1  \ngarbage\n0-1-x\n"
    assert GtidSet.from_state_file(text).text() == "0-2-9,1-1-4,2-1-1"
    assert GtidSet.from_state_file("").text() == ""


def test_normalize_orders_domains_for_comparison():
    assert normalize_gtid("1-1-4,0-1-7") == "0-1-7,1-1-4"
    assert normalize_gtid("10-1-1,2-1-1") == "2-1-1,10-1-1"  # numeric, not text order
    assert normalize_gtid("") == normalize_gtid(None) == ""
    assert GtidSet.parse("1-1-4,0-1-7") == GtidSet.parse("0-1-7,1-1-4")
