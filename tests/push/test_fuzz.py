"""Property-based bad input for the push receiver: random bodies, paths and query strings never get a 500, and an
upload that is not acknowledged stores nothing (property: refused -> the punches table did not change)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.push import protocol as p
from tests.support.gateway import stored_keys
from tests.support.push import SERIAL, Rig, make_rig

ALLOWED = {200, 400, 403, 404, 405, 413}

line = st.one_of(
    st.text(max_size=80),
    st.builds(lambda pin, t, rest: f"{pin}\t{t}\t{rest}", st.text(max_size=12),
              st.one_of(st.just("2026-11-30 08:00:00"), st.just("2026-02-31 08:00:00"), st.text(max_size=20)),
              st.text(max_size=30)),
)
bodies = st.one_of(st.binary(max_size=600), st.lists(line, max_size=12).map(lambda ls: "\n".join(ls).encode()))


@pytest.fixture
def rig(sqlite_url: str, tmp_path: Path) -> Iterator[Rig]:
    # One rig for all examples of a test (hypothesis runs them inside one call of the test function).
    yield from make_rig(sqlite_url, tmp_path, rate_per_device=10_000, max_lines=50, max_body_bytes=8192)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, table=st.sampled_from(["ATTLOG", "attlog", "OPERLOG", "options", "", "ATTPHOTO", "x" * 300]),
       ctype=st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "", "application/octet-stream"]))
def test_random_uploads_never_500_and_refused_ones_store_nothing(rig: Rig, body: bytes, table: str,
                                                                 ctype: str) -> None:
    before = stored_keys(rig.db_url)
    r = rig.client.post("/iclock/cdata", params={"SN": SERIAL, "table": table, "Stamp": "9999"}, content=body,
                        headers={"Content-Type": ctype} if ctype else {})
    assert r.status_code in ALLOWED, (r.status_code, r.text)
    after = stored_keys(rig.db_url)
    if r.status_code != 200 or not r.text.startswith("OK"):
        assert after == before
    else:
        assert not (before - after)  # nothing ever removed
        if table.upper() == "ATTLOG":
            accepted = int(r.text.split(":")[1])
            assert sum((after - before).values()) <= accepted


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(["/iclock/cdata", "/iclock/getrequest", "/iclock/devicecmd", "/iclock/ping",
                             "/iclock/registry", "/iclock/push", "/iclock/cdata.aspx", "/iclock/nothing"]),
       params=st.dictionaries(st.sampled_from(["SN", "sn", "table", "INFO", "options", "pushver", "pushcommkey",
                                               "Stamp", "PIN", "x"]), st.text(max_size=40), max_size=5),
       method=st.sampled_from(["GET", "POST"]), body=st.binary(max_size=200))
def test_random_requests_never_500(rig: Rig, path: str, params: dict[str, str], method: str, body: bytes) -> None:
    r = rig.client.request(method, path, params=params, content=body if method == "POST" else None)
    assert r.status_code in ALLOWED, (r.status_code, r.text)


@settings(max_examples=1000, deadline=None)
@given(text=st.text(max_size=400))
def test_parsers_never_raise(text: str) -> None:
    batch = p.parse_attlog(text, 50)
    assert all(len(x.user_id) <= p.PIN_MAX for x in batch.punches)
    p.parse_operlog(text, 50)
    p.parse_results(text, 50)
    p.parse_info(text)
    p.body_text(text.encode("utf-8", "surrogatepass"), "application/x-www-form-urlencoded")
