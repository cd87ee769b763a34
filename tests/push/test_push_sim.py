"""The simulated push terminal as fpgw-sim runs it: fleet-file entries with kind = "push", --push-devices and
--push-server, and its own handling of replies (what it accepts as an acknowledgement)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.cli import main as sim_main
from simulators.push.fleet import spec_from_entry, specs_from_entries
from simulators.zk.config import ConfigError, fleet_from_mapping
from tests.support.fleet import truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys
from tests.support.push import push_config, receiver_port


def test_fleet_file_push_entries_are_kept_apart_and_validated() -> None:
    cfg = fleet_from_mapping({"devices": [{"serial": "ZK1"},
                                          {"kind": "push", "serial": "P1", "aspx": True, "records": 3},
                                          {"kind": "push", "serial": "P2", "server": "http://10.0.0.5:8081"}]})
    assert [d.serial for d in cfg.devices] == ["ZK1"]
    specs = specs_from_entries(cfg.push_devices, server="http://127.0.0.1:9")
    assert [(p.serial, p.server, p.aspx, p.records) for p in specs] == [
        ("P1", "http://127.0.0.1:9", True, 3), ("P2", "http://10.0.0.5:8081", False, 0)]
    with pytest.raises(ConfigError, match="kind"):
        fleet_from_mapping({"devices": [{"kind": "bacnet", "serial": "X"}]})
    for bad, needle in (({"serial": "P", "aspx": "yes"}, "aspx"), ({"serial": "P", "porty": 1}, "porty"),
                        ({"records": 1}, "serial"), ({"serial": "P", "batch_size": 0}, "batch_size")):
        with pytest.raises(ConfigError, match=needle):
            spec_from_entry("devices[0]", bad)


@pytest.mark.timeout(60)
def test_fpgw_sim_push_devices_upload_to_a_gateway(sqlite_url: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    truth = tmp_path / "truth.jsonl"
    with RunningGateway(push_config(sqlite_url, tmp_path, ["PUSH0001", "PUSH0002"])) as gw:
        rc = sim_main(["--devices", "0", "--push-devices", "2", "--push-server",
                       f"http://127.0.0.1:{receiver_port(gw)}", "--punch-rate", "30", "--truth", str(truth),
                       "--no-control", "--duration", "4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "PUSH0001" in out and "push ->" in out
    expected = truth_keys(truth)
    assert sum(expected.values()) >= 2
    # Anything punched in the last instant before the stop may still be on the terminal: stored is a subset,
    # and every stored punch is in the truth exactly once.
    stored = stored_keys(sqlite_url)
    assert not (stored - expected), diff(expected, stored)
    assert {k[0] for k in stored} == {"PUSH0001", "PUSH0002"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("reply", "acknowledged"), [("OK: 2", 2), ("OK:2", 2), ("OK", 2), ("OK: 1", 1),
                                                      ("FAIL", 0), ("", 0)])
def test_simulated_terminal_advances_by_what_the_server_acknowledged(reply: str, acknowledged: int) -> None:
    from email.utils import formatdate

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gateway.web.server import ThreadedServer
    from simulators.push.terminal import PushSpec, PushTerminal
    from tests.support.wait import wait_until

    uploads: list[str] = []

    async def cdata(request: Request) -> PlainTextResponse:
        if request.method == "GET":
            return PlainTextResponse("GET OPTION FROM: P1\nDelay=1\nErrorDelay=1\n",
                                     headers={"Date": formatdate(usegmt=True)})
        uploads.append((await request.body()).decode())
        return PlainTextResponse(reply)

    async def getrequest(request: Request) -> PlainTextResponse:
        return PlainTextResponse("OK")

    app = Starlette(routes=[Route("/iclock/cdata", cdata, methods=["GET", "POST"]),
                            Route("/iclock/getrequest", getrequest)])
    with ThreadedServer(app, date_header=False) as server:
        term = PushTerminal(PushSpec(serial="P1", server=server.url, records=2, max_wait_s=0.1, timeout_s=3))
        term.start()
        try:
            if acknowledged == 2:
                wait_until(lambda: term.pending == 0, 20, "the batch acknowledged")
            elif acknowledged == 1:
                wait_until(lambda: term.pending == 0 and len(uploads) >= 2, 20, "two single acknowledgements")
            else:
                wait_until(lambda: len(uploads) >= 2, 20, "a resend")
        finally:
            term.stop()
    lines = uploads[0].splitlines()
    assert len(lines) == 2
    if acknowledged == 2:
        assert len(uploads) == 1
    elif acknowledged == 1:
        assert uploads[1].splitlines() == lines[1:]  # only what was not acknowledged
    else:
        assert uploads[1] == uploads[0] and term.pending == 2 and term.stats.failed_calls >= 1
