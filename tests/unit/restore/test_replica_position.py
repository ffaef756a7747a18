"""The GTID position a rebuilt replica starts from covers every domain the replay moved."""

from __future__ import annotations

from backupkit.restore.replica import reached_position


def test_every_domain_the_replay_moved_is_taken_from_the_last_segments_state():
    # base at 0-1-10,1-1-5; the replay applied domain 1 up to 9 and, last, domain 0 up to 20
    pos = reached_position("0-1-10,1-1-5", "0-1-20", segment_state="0-1-20,1-1-9")
    assert pos == "0-1-20,1-1-9"


def test_without_a_segment_state_the_reached_gtid_moves_its_domain():
    assert reached_position("0-1-10,1-1-5", "0-1-20") == "0-1-20,1-1-5"


def test_a_domain_only_in_the_segments_is_added_and_nothing_moves_backwards():
    assert reached_position("0-1-10", "", segment_state="0-1-12,2-3-4") == "0-1-12,2-3-4"
    assert reached_position("0-1-10,1-1-5", "0-1-8", segment_state="0-1-9") == "0-1-10,1-1-5"
