"""How a restore places the backup's users on a terminal that already holds some (gateway.enrol.restore.plan_uids):
same PIN -> overwritten in place under the terminal's uid; another person under the same PIN -> skipped and
reported unless --overwrite; a taken uid -> the next free one; and the algorithm check's messages."""

from __future__ import annotations

from drivers.base import EnrolledUser
from gateway.enrol.restore import _templates_refused, plan_uids


def test_users_keep_their_uid_when_free_and_move_when_taken() -> None:
    backup = [EnrolledUser(1, "1001", "Ani"), EnrolledUser(2, "1002", "Budi"), EnrolledUser(3, "1003", "Citra")]
    present = [EnrolledUser(2, "9999", "Someone else"), EnrolledUser(7, "1003", "Citra")]
    plan, skipped = plan_uids(backup, present)
    assert skipped == {}
    assert plan[1].uid == 1  # free: kept
    assert plan[2].uid == 8  # uid 2 belongs to another PIN: next free after every uid in sight
    assert plan[3].uid == 7  # the same PIN is already there: overwritten in place
    assert [p.user_id for p in plan.values()] == ["1001", "1002", "1003"]


def test_a_pin_held_by_another_name_is_reported_not_overwritten() -> None:
    backup = [EnrolledUser(1, "1001", "Ani")]
    present = [EnrolledUser(5, "1001", "Dewi")]
    plan, skipped = plan_uids(backup, present)
    assert plan == {} and "as 'Dewi', the backup as 'Ani'" in skipped[1] and "--overwrite" in skipped[1]
    plan, skipped = plan_uids(backup, present, overwrite=True)
    assert skipped == {} and plan[1].uid == 5 and plan[1].name == "Ani"


def test_templates_move_only_between_equal_known_algorithms() -> None:
    assert _templates_refused(10, 10, "old", "new") == ""
    assert "old used fingerprint algorithm 10 and new uses 9" in _templates_refused(10, 9, "old", "new")
    assert "unknown" in _templates_refused(0, 10, "old", "new")
    assert "unknown" in _templates_refused(10, 0, "old", "new")
