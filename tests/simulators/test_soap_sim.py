"""The simulated SOAP terminal (simulators/soap) on its own: lenient request parsing as the vendor samples send
requests, the answer's shape (HTTP/1.0, Server: ZK Web Server, closed not sized), comm key, fleet files."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from simulators.soap import SoapTerminal, soap_specs_from_entries
from simulators.soap.codec import parse_request
from simulators.zk.config import ConfigError, fleet_from_mapping
from simulators.zk.truth import read_truth
from tests.support.soap import soap_fleet, soap_spec

pytestmark = pytest.mark.timeout(30)


def exchange(term: SoapTerminal, raw: bytes, *, half_close: bool = False) -> bytes:
    with socket.create_connection((term.host, term.port), timeout=5) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_php_sample_request_gets_a_close_delimited_http10_answer(tmp_path: Path) -> None:
    with soap_fleet(tmp_path / "t.jsonl") as fleet:
        term = fleet.add(soap_spec("SIM-SOAP-1", records=3))
        # The Solution sample: HTTP/1.0, no Host, undeclared xsi: prefix, CRLF not counted in Content-Length.
        body = b'<GetAttLog><ArgComKey xsi:type="xsd:integer">0</ArgComKey><Arg><PIN xsi:type="xsd:integer">All' \
               b'</PIN></Arg></GetAttLog>'
        raw = b"POST /iWsService HTTP/1.0\r\nContent-Type: text/xml\r\nContent-Length: " + \
            str(len(body)).encode() + b"\r\n\r\n" + body + b"\r\n"
        answer = exchange(term, raw)
    head, _, text = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"Server: ZK Web Server" in head
    assert b"Content-Length" not in head
    assert text.startswith(b'<?xml version="1.0" encoding="iso8859-1" standalone="no"?>')
    assert text.count(b"<Row>") == 3 and b"</Row>\r\n" in text and text.rstrip().endswith(b"</GetAttLogResponse>")
    truth = [r for r in read_truth(tmp_path / "t.jsonl") if r["serial"] == "SIM-SOAP-1"]
    assert len(truth) == 3 and all(f"<PIN>{r['user_id']}</PIN><DateTime>{r['time']}</DateTime>".encode() in text
                                   for r in truth)


def test_node_style_request_without_length_and_an_envelope_are_understood(tmp_path: Path) -> None:
    with soap_fleet() as fleet:
        term = fleet.add(soap_spec("SIM-SOAP-2", comm_key=55))
        node = b"POST /iWsService HTTP/1.0\r\nContent-Type: text/xml;\r\n\r\n" \
               b"<GetDate><ArgComKey>55</ArgComKey></GetDate>"
        assert b"<Date>" in exchange(term, node, half_close=True)
        envelope = (b'<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Body>'
                    b'<GetDate xmlns="http://www.zksoftware/Service/message/"><ArgComKey>55</ArgComKey></GetDate>'
                    b'</SOAP-ENV:Body></SOAP-ENV:Envelope>')
        raw = b"POST /iWsService HTTP/1.1\r\nHost: x\r\nSOAPAction: uri:zksoftware\r\nContent-Length: " + \
            str(len(envelope)).encode() + b"\r\n\r\n" + envelope
        assert b"<Date>" in exchange(term, raw)
        wrong = b"POST /iWsService HTTP/1.0\r\n\r\n<GetDate><ArgComKey>56</ArgComKey></GetDate>"
        refused = exchange(term, wrong, half_close=True)
        assert b"<GetDateResponse>" in refused and b"<Date>" not in refused and term.refused == 1


def test_request_parser_is_lenient() -> None:
    call = parse_request('<ClearData><ArgComKey xsi:type=\\"xsd:integer\\">0</ArgComKey><Arg><Value>3</Value>'
                         '</Arg></ClearData>')
    assert call is not None and call.method == "ClearData" and call.comm_key == "0" and call.arg("value") == "3"
    multi = parse_request("<GetUserInfo><ArgComKey>0</ArgComKey><Arg><PIN>1</PIN></Arg><Arg><PIN>2</PIN></Arg>"
                          "</GetUserInfo>")
    assert multi is not None and [a["PIN"] for a in multi.args] == ["1", "2"]
    assert parse_request("no xml here") is None


def test_fleet_file_soap_entries_get_their_own_addresses_and_bad_keys_are_named() -> None:
    cfg = fleet_from_mapping({"devices": [{"kind": "soap", "serial": "S-A", "port": 8080},
                                          {"kind": "soap", "serial": "S-B", "port": 8080, "pin2": True},
                                          {"serial": "ZK-1"}]})
    specs = soap_specs_from_entries(cfg.soap_devices)
    assert [(s.serial, s.host, s.port) for s in specs] == [("S-A", "127.0.1.1", 8080), ("S-B", "127.0.1.2", 8080)]
    assert len(cfg.devices) == 1
    by_port = soap_specs_from_entries(cfg.soap_devices, base_host="127.0.0.1", per_device="port")
    assert [(s.host, s.port) for s in by_port] == [("127.0.0.1", 8080), ("127.0.0.1", 8081)]
    with pytest.raises(ConfigError, match=r"devices\[0\]\.records: expected an integer"):
        soap_specs_from_entries(fleet_from_mapping({"devices": [{"kind": "soap", "serial": "X",
                                                                 "records": "many"}]}).soap_devices)
    with pytest.raises(ConfigError, match="unknown key for a SOAP terminal"):
        soap_specs_from_entries([("devices[0]", {"serial": "X", "record_layout": 40})])
    with pytest.raises(ConfigError, match="kind"):
        fleet_from_mapping({"devices": [{"kind": "bacnet", "serial": "X"}]})


def test_fpgw_sim_serves_soap_terminals_from_a_fleet_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text('[fleet]\ncontrol_port = 0\ntruth = "truth.jsonl"\n\n'
                          '[[devices]]\nkind = "soap"\nserial = "SOL-CLI-1"\nport = 0\nrecords = 4\n', encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "simulators.cli", "--fleet", str(fleet_file), "--duration", "0.5"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "SOL-CLI-1" in out.stdout and "soap 127.0.1.1:" in out.stdout and "/iWsService" in out.stdout
    assert len([r for r in read_truth(tmp_path / "truth.jsonl") if r["serial"] == "SOL-CLI-1"]) == 4
