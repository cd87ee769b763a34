"""End to end: simulated push terminals (simulators.push, HTTP clients) -> the daemon's push receiver ->
punches in the database exactly once (SQLite and PostgreSQL), health, unknown terminals, commands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.store import schema as s
from simulators.zk.truth import TruthWriter
from tests.support.fleet import truth_keys
from tests.support.gateway import RunningGateway, diff, stored_keys, table_rows
from tests.support.proxy import FaultyProxy
from tests.support.push import push_config, receiver_port, terminal
from tests.support.tls import self_signed_cert
from tests.support.wait import wait_until


@pytest.fixture
def truth(tmp_path: Path) -> Iterator[TruthWriter]:
    writer = TruthWriter(tmp_path / "truth.jsonl")
    yield writer
    writer.close()


def test_push_terminals_with_quirks_store_every_punch_exactly_once(db_url: str, tmp_path: Path,
                                                                  truth: TruthWriter) -> None:
    serials = ["PSH001", "PSH002", "PSH003"]
    cfg = push_config(db_url, tmp_path, serials)
    with RunningGateway(cfg) as gw:
        url = f"http://127.0.0.1:{receiver_port(gw)}"
        with terminal(url, truth, serial="PSH001", records=30, batch_size=7) as t1, \
                terminal(url, truth, serial="PSH002", records=5, aspx=True, crlf=True) as t2, \
                terminal(url, truth, serial="PSH003", records=4, form_encoded=True, pushver="3.1.2") as t3:
            for i, t in enumerate((t1, t2, t3)):
                t.punch(1, at=f"2026-11-30 08:0{i}:00", user_id=f"9{i}")
            wait_until(lambda: all(t.pending == 0 for t in (t1, t2, t3)), 30, "every record acknowledged")
            assert t3.stats.handshakes >= 1 and t1.stats.uploads >= 5
    expected = truth_keys(tmp_path / "truth.jsonl")
    assert sum(expected.values()) == 42
    assert stored_keys(db_url) == expected, diff(expected, stored_keys(db_url))


def test_reply_lost_after_commit_resend_is_stored_once(db_url: str, tmp_path: Path, truth: TruthWriter) -> None:
    cfg = push_config(db_url, tmp_path, ["PSH001"])
    with RunningGateway(cfg) as gw, FaultyProxy(receiver_port(gw)) as proxy, \
            terminal(proxy.url, truth, serial="PSH001") as term:
            wait_until(lambda: term.stats.handshakes >= 1, 20, "handshake")
            # The gateway commits the upload, then the reply is cut: the terminal must send it again.
            proxy.set_mode("drop_mid_response")
            term.punch(1, at="2026-11-30 07:30:00", user_id="42")
            term.punch(1, at="2026-11-30 07:31:00", user_id="43")
            wait_until(lambda: sum(stored_keys(db_url).values()) == 2 and proxy.hits["cut"] >= 2, 20,
                       "the upload committed while its replies are cut")
            assert term.pending == 2  # committed, but never acknowledged
            proxy.set_mode("pass")
            wait_until(lambda: term.pending == 0, 20, "the resend acknowledged")
            assert term.stats.failed_calls >= 2
    expected = truth_keys(tmp_path / "truth.jsonl")
    stored = stored_keys(db_url)
    assert stored == expected, diff(expected, stored)


def test_server_down_then_back_terminal_resends_everything(sqlite_url: str, tmp_path: Path,
                                                          truth: TruthWriter) -> None:
    cfg = push_config(sqlite_url, tmp_path, ["PSH001"])
    with RunningGateway(cfg) as gw, FaultyProxy(receiver_port(gw)) as proxy:
        proxy.set_mode("refuse")
        with terminal(proxy.url, truth, serial="PSH001", records=12, batch_size=5) as term:
            wait_until(lambda: term.stats.failed_calls >= 3, 20, "calls refused while the server is down")
            term.punch(1, at="2026-11-30 09:00:00", user_id="7")
            assert term.pending == 13
            proxy.set_mode("pass")
            wait_until(lambda: term.pending == 0, 30, "backlog uploaded")
    expected = truth_keys(tmp_path / "truth.jsonl")
    assert stored_keys(sqlite_url) == expected, diff(expected, stored_keys(sqlite_url))


def test_unknown_terminal_is_refused_slowly_recorded_and_loses_nothing(sqlite_url: str, tmp_path: Path,
                                                                      truth: TruthWriter) -> None:
    cfg = push_config(sqlite_url, tmp_path, ["PSH001"], http={"enabled": True, "port": 0})
    with RunningGateway(cfg) as gw:
        url = f"http://127.0.0.1:{receiver_port(gw)}"
        with terminal(url, truth, serial="STRANGER9", records=3) as term:
            wait_until(lambda: term.stats.failed_calls >= 1 and term.stats.handshakes >= 1, 20,
                       "the unknown terminal's upload refused")
            # Told to call rarely (the simulator clamps it, a real terminal waits 10 minutes).
            assert int(term.stats.options["Delay"]) >= 600 and int(term.stats.options["ErrorDelay"]) >= 600
            assert term.pending == 3  # refused, not acknowledged: still on the terminal
        # The status server lists it (JSON at /push) with its serial and address.
        listing = httpx.get(f"http://127.0.0.1:{gw.gateway.ctx.http_port}/push", timeout=10).json()
        status = httpx.get(f"http://127.0.0.1:{gw.gateway.ctx.http_port}/status", timeout=10).json()
        assert "p0" in str(status)
        # ... and the status page shows it to the team, with the one command that adds it.
        assert [u["serial"] for u in status["unknown_terminals"]] == ["STRANGER9"]
        page = httpx.get(f"http://127.0.0.1:{gw.gateway.ctx.http_port}/", timeout=10)
        assert page.status_code == 200
        assert "unknown terminal trying to push" in page.text and "fpgw devices add-push STRANGER9" in page.text
        assert [(u["serial"], u["address"]) for u in listing["unknown_terminals"]] == [("STRANGER9", "127.0.0.1")]
    assert sum(stored_keys(sqlite_url).values()) == 0
    unknown = [r for r in table_rows(sqlite_url, s.kv) if r["key"].startswith("push_unknown:")]
    assert len(unknown) == 1 and '"STRANGER9"' in unknown[0]["value"] and "127.0.0.1" in unknown[0]["value"]


def test_push_terminal_health_online_with_counts_and_firmware_from_info(sqlite_url: str, tmp_path: Path,
                                                                             truth: TruthWriter) -> None:
    cfg = push_config(sqlite_url, tmp_path, ["PSH001"], offline_after_s=30)
    with RunningGateway(cfg) as gw:
        url = f"http://127.0.0.1:{receiver_port(gw)}"
        with terminal(url, truth, serial="PSH001", records=6, firmware="Ver 8.0.4-20240101") as term:
            wait_until(lambda: term.pending == 0, 20, "records uploaded")
            wait_until(lambda: any(o.counts is not None and o.counts.records == 6
                                   for o in gw.recorder.outcomes), 20, "INFO counts reported")
        health = gw.gateway.ctx.health
        assert health is not None
        assert health.snapshot()["p0"].state == "online"
        devices = table_rows(sqlite_url, s.devices)
        assert devices[0]["serial"] == "PSH001" and devices[0]["firmware"] == "Ver 8.0.4-20240101"
        assert devices[0]["last_record_count"] == 6


@pytest.mark.timeout(60)
def test_receiver_serves_https_with_the_configured_certificate(sqlite_url: str, tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed_cert(tmp_path)
    cfg = push_config(sqlite_url, tmp_path, ["PSH001"], tls_cert_file=str(cert), tls_key_file=str(key))
    with RunningGateway(cfg) as gw:
        url = f"https://127.0.0.1:{receiver_port(gw)}/iclock/cdata"
        trust = ssl.create_default_context(cafile=str(cert))
        r = httpx.post(url, params={"SN": "PSH001", "table": "ATTLOG"}, content=b"9\t2026-11-30 08:00:00\t0\t1\n",
                       verify=trust, timeout=10)
        assert (r.status_code, r.text) == (200, "OK: 1")
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
            httpx.get(url.replace("https", "http"), params={"SN": "PSH001"}, timeout=5)
    assert sum(stored_keys(sqlite_url).values()) == 1
