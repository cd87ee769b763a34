"""Property tests of the office sync's planning function (gateway.enrol.sync.plan_sync): pure, no terminal.

Views of N terminals and a previous sync's memory are generated; the plan must never write a PIN in conflict,
never delete without sync_deletes (nor delete a user no terminal lost), never copy to a terminal of another
algorithm with templates, and be idempotent: applied to the views, the next plan has no action.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import EnrolledUser, Template
from gateway.enrol.sync import Member, Remembered, SyncPlan, TerminalView, plan_sync, remember

PINS = ["1", "2", "3", "4"]
NAMES = ["Ani", "Budi", ""]
# Template "sets": a person's fingers as (finger, data); a few distinct persons' worth.
FINGER_SETS: list[tuple[tuple[int, bytes], ...]] = [(), ((0, b"A0"),), ((0, b"A0"), (1, b"A1")), ((0, b"B0"),)]


def member(uid: int, pin: str, name: str, fingers: Sequence[tuple[int, bytes]]) -> Member:
    return Member(EnrolledUser(uid, pin, name), tuple(Template(uid, f, 1, d) for f, d in fingers))


@st.composite
def office(draw: st.DrawFn) -> tuple[list[TerminalView], dict[str, Remembered]]:
    n = draw(st.integers(2, 4))
    views = []
    memory: dict[str, Remembered] = {}
    for i in range(n):
        device_id = f"t{i}"
        algorithm = draw(st.sampled_from([10, 10, 9, 0]))
        users = {}
        for pin in draw(st.lists(st.sampled_from(PINS), unique=True)):
            users[pin] = member(int(pin), pin, draw(st.sampled_from(NAMES)), draw(st.sampled_from(FINGER_SETS)))
        views.append(TerminalView(device_id, algorithm, users))
        remembered = {pin: draw(st.sampled_from(NAMES)) for pin in draw(st.lists(st.sampled_from(PINS), unique=True))}
        withheld = {pin: "" for pin in draw(st.lists(st.sampled_from(PINS), unique=True))}
        memory[device_id] = Remembered(remembered, withheld)
    return views, memory


def apply(views: Sequence[TerminalView], plan: SyncPlan) -> list[TerminalView]:
    """What the terminals hold after the plan is written (the model of gateway.enrol.sync._apply)."""
    by_id = {v.device_id: dict(v.users) for v in views}
    original = {v.device_id: v for v in views}
    for a in plan.actions:
        users = by_id[a.target]
        if a.kind == "delete":
            del users[a.user_id]
        elif a.kind == "copy":
            src = original[a.source].users[a.user_id]
            users[a.user_id] = Member(src.user, src.templates if a.templates else ())
        else:
            src = original[a.source].users[a.user_id]
            users[a.user_id] = Member(users[a.user_id].user, src.templates)
    return [TerminalView(v.device_id, v.algorithm, by_id[v.device_id]) for v in views]


def conflicting_pins(plan: SyncPlan) -> set[str]:
    return {c.user_id for c in plan.conflicts}


@settings(max_examples=300, deadline=None)
@given(office(), st.booleans())
def test_plan_never_writes_a_conflict_never_deletes_unasked_and_is_idempotent(
        data: tuple[list[TerminalView], dict[str, Remembered]], sync_deletes: bool) -> None:
    views, memory = data
    plan = plan_sync(views, memory, sync_deletes=sync_deletes)
    by_id = {v.device_id: v for v in views}
    # Never a write on a conflicting PIN, never an overwrite of a user the target holds.
    for a in plan.actions:
        assert a.user_id not in conflicting_pins(plan)
        if a.kind == "copy":
            assert a.user_id not in by_id[a.target].users
            if a.templates:
                assert by_id[a.source].algorithm == by_id[a.target].algorithm != 0
        if a.kind == "templates":
            assert not by_id[a.target].users[a.user_id].templates
            assert by_id[a.source].algorithm == by_id[a.target].algorithm != 0
            assert by_id[a.source].users[a.user_id].user.name in (by_id[a.target].users[a.user_id].user.name, "") \
                or by_id[a.target].users[a.user_id].user.name == ""
        if a.kind == "delete":
            assert sync_deletes
            # Someone lost it since the previous sync: a terminal that remembered it and no longer holds it.
            assert any(a.user_id in {**memory[v.device_id].users, **memory[v.device_id].withheld}
                       and a.user_id not in v.users for v in views)
    # A PIN a terminal holds as another name than on another terminal is always reported.
    for pin in PINS:
        names = {v.users[pin].user.name for v in views if pin in v.users} - {""}
        if len(names) > 1:
            assert pin in conflicting_pins(plan)
    # Idempotent: after writing, with the memory the sync saves, nothing is left to do.
    after = apply(views, plan)
    again = plan_sync(after, remember(after, plan), sync_deletes=sync_deletes)
    assert again.actions == ()
    # Conflicts are not resolved by the sync: still reported.
    assert conflicting_pins(again) == conflicting_pins(plan)


def view(device_id: str, algorithm: int, users: Mapping[str, Member]) -> TerminalView:
    return TerminalView(device_id, algorithm, users)


def test_a_delete_is_what_a_terminal_lost_never_what_another_lacks() -> None:
    ani = member(1, "1", "Ani", [(0, b"A0")])
    views = [view("a", 10, {}), view("b", 10, {"1": ani}), view("c", 10, {})]
    # No previous view: c and a merely lack it; it is copied, never deleted.
    plan = plan_sync(views, {}, sync_deletes=True)
    assert sorted((a.kind, a.target) for a in plan.actions) == [("copy", "a"), ("copy", "c")]
    # a held it at the previous sync and lost it: deleted elsewhere only with sync_deletes ...
    memory = {"a": Remembered({"1": "Ani"}), "b": Remembered({"1": "Ani"}), "c": Remembered({"1": "Ani"})}
    views = [view("a", 10, {}), view("b", 10, {"1": ani}), view("c", 10, {"1": ani})]
    plan = plan_sync(views, memory, sync_deletes=True)
    assert sorted((a.kind, a.target) for a in plan.actions) == [("delete", "b"), ("delete", "c")]
    # ... and without it, it is kept and not copied back to a.
    plan = plan_sync(views, memory, sync_deletes=False)
    assert plan.actions == () and plan.withheld == {"a": {"1": "Ani"}}
    assert plan_sync(views, remember(views, plan), sync_deletes=False).actions == ()


def test_conflicts_and_other_algorithms() -> None:
    ani, budi = member(1, "1", "Ani", [(0, b"A0")]), member(1, "1", "Budi", [(0, b"B0")])
    ani_other_finger = member(7, "1", "Ani", [(0, b"X0")])
    plan = plan_sync([view("a", 10, {"1": ani}), view("b", 10, {"1": budi}), view("c", 10, {})], {},
                     sync_deletes=True)
    assert plan.actions == () and [c.user_id for c in plan.conflicts] == ["1"] and "names" in plan.conflicts[0].reason
    plan = plan_sync([view("a", 10, {"1": ani}), view("b", 10, {"1": ani_other_finger})], {}, sync_deletes=False)
    assert plan.actions == () and "templates" in plan.conflicts[0].reason
    # Another algorithm: the same templates are not compared, the user is copied without them.
    plan = plan_sync([view("a", 10, {"1": ani}), view("b", 9, {"1": ani_other_finger}), view("c", 9, {})], {},
                     sync_deletes=False)
    assert plan.conflicts == ()
    assert [(a.kind, a.target, a.source, a.templates) for a in plan.actions] == [("copy", "c", "b", True)]
    plan = plan_sync([view("a", 10, {"1": ani}), view("c", 9, {})], {}, sync_deletes=False)
    assert [(a.kind, a.target, a.templates) for a in plan.actions] == [("copy", "c", False)]
    assert plan.notes == ("1 user(s) copied to c without templates (PIN 1): its fingerprint algorithm (9) differs "
                          "from the terminals that hold them; the fingers must be enrolled there again",)


def test_a_reset_terminal_is_filled_again_never_taken_for_deletes() -> None:
    people = {str(p): member(p, str(p), f"P{p}", [(0, bytes([p]) * 4)]) for p in range(1, 6)}
    memory = {"a": Remembered({pin: m.user.name for pin, m in people.items()}),
              "b": Remembered({pin: m.user.name for pin, m in people.items()})}
    views = [view("a", 10, {}), view("b", 10, people)]  # a was reset: every user gone at once
    plan = plan_sync(views, memory, sync_deletes=True)
    assert not any(a.kind == "delete" for a in plan.actions)
    assert sorted(a.user_id for a in plan.actions if a.kind == "copy" and a.target == "a" and a.templates) == \
        sorted(people)
    assert any("a lost 5 of the 5 users" in n for n in plan.notes)
    # One user deleted on purpose is still a delete.
    views = [view("a", 10, {p: m for p, m in people.items() if p != "3"}), view("b", 10, people)]
    plan = plan_sync(views, memory, sync_deletes=True)
    assert [(a.kind, a.target, a.user_id) for a in plan.actions] == [("delete", "b", "3")]
