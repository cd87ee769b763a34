"""Config validation: every problem names its key; the example config stays loadable."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def minimal(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"site": {"office_code": "1801.01.02"},
                           "devices": [{"id": "lobby", "address": "192.168.1.20"}]}
    doc.update(over)
    return doc


def problems(doc: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, base_dir=tmp_path)
    return exc.value.problems


@pytest.mark.timeout(10)
def test_minimal_config_gets_sensible_defaults(tmp_path: Path) -> None:
    c = parse_config(minimal(), base_dir=tmp_path)
    assert c.site.timezone == "Asia/Jakarta"
    assert c.database.url == f"sqlite:///{tmp_path / 'state' / 'fpgw.db'}" or c.database.url.endswith("/fpgw.db")
    dev = c.device("lobby")
    assert (dev.port, dev.transport, dev.comm_key, dev.interval_s, dev.timezone) == (4370, "tcp", 0, 300.0,
                                                                                     "Asia/Jakarta")
    assert dev.installed_on is None


BAD_CASES = [
    ({"site": {}}, "site.office_code: is required"),
    (minimal(site={"office_code": "X", "timezone": "Asia/Bandung"}), "site.timezone: unknown time zone"),
    (minimal(polling={"interval_s": 2}), "polling.interval_s: must be at least 5"),
    (minimal(polling={"interval_s": "often"}), "polling.interval_s: must be a duration"),
    (minimal(polling={"pool_size": 0}), "polling.pool_size: must be between 1 and 128"),
    (minimal(polling={"intervall_s": 60}), "polling.intervall_s: unknown key"),
    (minimal(devices=[{"id": "a b", "address": "x"}]), "devices[0].id:"),
    (minimal(devices=[{"id": "a", "address": "x"}, {"id": "a", "address": "y"}]), "devices[1].id: duplicate"),
    (minimal(devices=[{"id": "a", "address": "x", "port": 70000}]), "devices[0].port: must be between 1 and 65535"),
    (minimal(devices=[{"id": "a", "address": "x", "transport": "serial"}]), "devices[0].transport: must be one of"),
    (minimal(devices=[{"id": "a", "address": "x", "comm_key": 1234}]), "devices[0].comm_key: secrets are not"),
    (minimal(devices=[{"id": "a", "address": "x", "comm_key_env": "FPGW_TEST_UNSET_KEY"}]),
     "devices[0].comm_key_env: environment variable FPGW_TEST_UNSET_KEY is not set"),
    (minimal(devices=[{"id": "a", "address": "x", "quirks": {"record_size": 12}}]), "devices[0].quirks: record_size"),
    (minimal(devices=[{"id": "a", "address": "x", "quirks": {"turbo": True}}]), "devices[0].quirks: unknown ZK quirk"),
    (minimal(devices=[{"id": "a", "address": "x", "installed_on": "last year"}]),
     "devices[0].installed_on: must be a date"),
    (minimal(devices=[{"id": "a", "address": "x"}, {"id": "b", "address": "x"}]),
     "devices[1].address: another device already uses x:4370/tcp"),
    (minimal(database={"url": "mysql://x"}), "database.url: only sqlite"),
    (minimal(logging={"format": "xml"}), "logging.format: must be one of"),
    (minimal(forward={"url": "https://bkd.example"}), "forward.token_env: forwarding needs"),
    (minimal(health={"working_hours": {"start": "7.30"}}), "health.working_hours.start: must be a time of day"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("doc", "expected"), BAD_CASES, ids=[c[1].split(":")[0] for c in BAD_CASES])
def test_every_problem_names_its_key(doc: dict[str, Any], expected: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FPGW_TEST_UNSET_KEY", raising=False)
    found = problems(doc, tmp_path)
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.timeout(10)
def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    doc = minimal(polling={"interval_s": 1, "pool_size": "many"},
                  devices=[{"id": "a", "address": "x", "port": 0}, {"id": "b"}])
    found = problems(doc, tmp_path)
    assert len(found) >= 4
    assert {p.split(":")[0] for p in found} >= {"polling.interval_s", "polling.pool_size", "devices[0].port",
                                                 "devices[1].address"}


@pytest.mark.timeout(10)
def test_comm_key_comes_from_env_or_file_and_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FPGW_TEST_KEY", "123456")
    (tmp_path / "b.key").write_text("654321\n")
    c = parse_config(minimal(devices=[{"id": "a", "address": "x", "comm_key_env": "FPGW_TEST_KEY"},
                                      {"id": "b", "address": "y", "comm_key_file": "b.key"}]), base_dir=tmp_path)
    assert c.device("a").comm_key == 123456 and c.device("b").comm_key == 654321
    assert "123456" not in repr(c) and "654321" not in repr(c)
    (tmp_path / "bad.key").write_text("12ab")
    found = problems(minimal(devices=[{"id": "a", "address": "x", "comm_key_file": "bad.key"}]), tmp_path)
    assert any(p.startswith("devices[0].comm_key_file: the comm key must be a number") for p in found)


@pytest.mark.timeout(10)
def test_per_device_overrides_and_installed_on(tmp_path: Path) -> None:
    c = parse_config(minimal(site={"office_code": "X", "timezone": "Asia/Makassar"},
                             polling={"interval_s": "2m"},
                             devices=[{"id": "a", "address": "x", "installed_on": date(2021, 3, 15)},
                                      {"id": "b", "address": "y", "interval_s": 30, "timezone": "Asia/Jayapura",
                                       "installed_on": "2022-01-01", "quirks": {"record_size": 16}}]),
                     base_dir=tmp_path)
    a, b = c.device("a"), c.device("b")
    assert (a.interval_s, a.timezone, a.installed_on) == (120.0, "Asia/Makassar", date(2021, 3, 15))
    assert (b.interval_s, b.timezone, b.installed_on, b.quirks) == (30.0, "Asia/Jayapura", date(2022, 1, 1),
                                                                   {"record_size": 16})


@pytest.mark.timeout(10)
def test_config_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """config.example.toml documents every key; it must stay valid."""
    path = REPO / "config.example.toml"
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for section in data.get("devices", []):
        if "comm_key_env" in section:
            monkeypatch.setenv(section["comm_key_env"], "1234")
    for table in ("alerts", "http", "forward"):
        for key, value in data.get(table, {}).items():
            if key.endswith("_env"):
                monkeypatch.setenv(value, "x")
    c = parse_config(data, base_dir=path.parent)
    assert c.site.office_code == "1801.01.02" and len(c.devices) >= 2
    # Every section of the Config is present in the example (so a new one cannot be forgotten).
    for section in ("site", "database", "polling", "devices", "logging", "employees", "health", "alerts", "http",
                    "forward", "central", "push"):
        assert section in data, f"config.example.toml lacks [{section}]"


@pytest.mark.timeout(10)
def test_load_config_reports_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "missing.toml")
    assert exc.value.problems[0].startswith("cannot read")
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\noffice_code = 1")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    assert exc.value.problems[0].startswith("TOML syntax error")


# -- [forward] allow_plain_http, [http] TLS (issue 8 item 11) ------------------------------------------------

@pytest.mark.parametrize(("url", "allow", "refused"), [
    ("http://bkd.example.go.id", False, True),
    ("http://10.1.2.3:8470", False, True),
    ("http://bkd.example.go.id", True, False),
    ("http://127.0.0.1:8470", False, False),
    ("http://localhost:8470", False, False),
    ("http://[::1]:8470", False, False),
    ("https://bkd.example.go.id", False, False),
])
def test_plain_http_forwarding_needs_allow_plain_http(url: str, allow: bool, refused: bool, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_FWD", "fpgw-test-secret-forward")
    forward: dict[str, Any] = {"url": url, "token_env": "T_FWD"}
    if allow:
        forward["allow_plain_http"] = True
    if refused:
        found = problems(minimal(forward=forward), tmp_path)
        assert any("forward.url" in p and "allow_plain_http = true" in p and "https://" in p for p in found), found
    else:
        assert parse_config(minimal(forward=forward), base_dir=tmp_path).forward.allow_plain_http is allow


def test_https_needs_both_certificate_and_key(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    found = problems(minimal(http={"tls_cert_file": "cert.pem"}), tmp_path)
    assert any("http.tls_key_file" in p and "both" in p for p in found), found
    found = problems(minimal(http={"tls_cert_file": "cert.pem", "tls_key_file": "missing.pem"}), tmp_path)
    assert any("http.tls_key_file" in p and "does not exist" in p for p in found), found
    (tmp_path / "key.pem").write_text("x")
    cfg = parse_config(minimal(http={"tls_cert_file": "cert.pem", "tls_key_file": "key.pem"}), base_dir=tmp_path)
    assert cfg.http.tls_cert_file == tmp_path / "cert.pem" and cfg.http.tls_key_file == tmp_path / "key.pem"
