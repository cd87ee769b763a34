"""Tier contracts without a network: token scopes with prefix patterns, the wire decoding of a tier's
multi-office batch, the ingest storing each punch under its office (with its outbox row when the central
forwards upstream), and the ``[central.upstream]`` config (the commented example in config.example.toml
included)."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway import wire
from gateway.central.tokens import TokenFileError, add_token, load_tokens
from gateway.config import parse_config
from gateway.configlib import ConfigError
from gateway.store import schema as s
from gateway.wire import OfficeScope
from tests.support.central import Central, make_central, punch
from tests.support.secrets import remember

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# Scopes and token files
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("entries", "allowed", "refused"), [
    (["1801.*"], ["1801.01", "1801.01.02", "1801.x-1"], ["1801", "18011.01", "1802.01", "1801.", "1801..01",
                                                        "1801.01 ", "1801.0\x001"]),
    (["1801", "1801.*"], ["1801", "1801.02"], ["1802", "18010"]),
    (["1801.01", "1802.02"], ["1801.01", "1802.02"], ["1801.02", "1801.01.02"]),
    (["18.01.*"], ["18.01.7"], ["18.02.7", "18.01"]),
])
def test_a_pattern_allows_exactly_the_offices_under_its_prefix(entries: list[str], allowed: list[str],
                                                               refused: list[str]) -> None:
    scope = OfficeScope.parse(entries)
    assert [c for c in allowed if scope.allows(c)] == allowed
    assert [c for c in refused if scope.allows(c)] == []
    assert OfficeScope.parse(scope.entries) == scope  # as written in a token file, and back


@pytest.mark.parametrize("entry", ["*.01", "1801*", "18*.01", "1801.*.*", "1801.**", ".*", "*", "", " 1801",
                                   "1801.", ".1801", "1801..01", "kab 1801", "1801.0\x001", "x" * 33,
                                   "1801/*", "ü1801"])
def test_a_malformed_office_or_pattern_is_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        OfficeScope.parse([entry])


def test_only_a_single_exact_office_is_a_single_office_scope() -> None:
    assert OfficeScope.parse(["1801.01"]).single == "1801.01"
    assert OfficeScope.parse(["1801.01", "1801.02"]).single is None
    assert OfficeScope.parse(["1801.*"]).single is None


def test_token_files_take_patterns_and_refuse_bad_ones_with_the_entry_named(tmp_path: Path) -> None:
    path = tmp_path / "gateways.toml"
    remember(add_token(path, "kab-1801", ["1801.*"], "gateway"), add_token(path, "gw", ["1801.01"], "gateway"))
    tier, office = load_tokens(path, "gateway")
    assert tier.allows("1801.05.01") and not tier.allows("1802.01") and tier.office is None
    assert office.office == "1801.01" and office.allows("1801.01") and not office.allows("1801.02")
    assert tier.scope_text == "1801.*"
    for bad in (["*"], ["1801*"], ["*.01"]):
        with pytest.raises(TokenFileError):
            add_token(path, "bad", bad, "gateway")
    with pytest.raises(TokenFileError, match="never every office"):
        add_token(path, "bad", None, "gateway")
    assert [t.name for t in load_tokens(path, "gateway")] == ["kab-1801", "gw"]  # nothing half-written
    broken = tmp_path / "broken.toml"
    broken.write_text('[[token]]\nname = "x"\nhash = "sha256:' + "0" * 64 + '"\noffices = ["18*.01"]\n')
    broken.chmod(0o600)
    with pytest.raises(TokenFileError, match=r"token #1 \(x\).*18\*\.01"):
        load_tokens(broken, "gateway")


def test_add_token_and_list_tokens_on_the_command_line_take_patterns(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli.main import main

    path, cfg = tmp_path / "gw.toml", tmp_path / "config.toml"
    cfg.write_text(f'[site]\noffice_code = "1801"\nstate_dir = "{tmp_path}"\n[database]\nurl = "sqlite://"\n')
    assert main(["-c", str(cfg), "central", "add-token", "--kind", "gateway", "--name", "kab", "--offices",
                 "1801.*,1801", "--file", str(path)]) == 0
    remember(capsys.readouterr().out.strip())
    assert main(["-c", str(cfg), "central", "add-token", "--kind", "gateway", "--name", "bad", "--offices", "18*",
                 "--file", str(path)]) == 1
    assert "'18*'" in capsys.readouterr().err
    assert main(["-c", str(cfg), "central", "list-tokens", "--kind", "gateway", "--file", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "kab\t1801,1801.*"


# --------------------------------------------------------------------------------------------------
# Wire: a tier's batch
# --------------------------------------------------------------------------------------------------

TIER = OfficeScope.parse(["1801.*"])


def _doc(*punches: Any, **meta: Any) -> dict[str, Any]:
    return {"batch_id": "b-1", "gateway": {"office_code": "1801", "tier": True, **meta}, "punches": list(punches)}


def test_a_tier_batch_keeps_each_punch_office_and_rejects_the_others_alone() -> None:
    no_office = {k: v for k, v in punch(user="10").items() if k != "office_code"}
    doc = _doc(punch(office_code="1801.01"), punch(office_code="1801.02.07", user="8"),
               punch(office_code="1802.01", user="9"), no_office,
               punch(office_code=18, user="11"), punch(office_code="1801.x y", user="12"))
    batch = wire.decode_punch_batch(doc, TIER, max_punches=10)
    assert [p.office_code for p, _ in batch.punches[:2]] == ["1801.01", "1801.02.07"]  # type: ignore[union-attr]
    reasons = batch.rejected
    assert sorted(reasons) == [2, 3, 4, 5]
    assert reasons[2].startswith("office_out_of_scope: office '1802.01'") and "1801.*" in reasons[2]
    assert reasons[3].startswith("missing_office")
    assert reasons[4].startswith("malformed: punches[4].office_code: must be a string")
    assert reasons[5].startswith("office_out_of_scope")


def test_a_single_office_token_keeps_todays_rules_whatever_the_meta_says() -> None:
    one = OfficeScope.parse(["1801.01"])
    batch = wire.decode_punch_batch({**_doc(punch(office_code="1801.02")), "gateway": {"office_code": "1801.01"}},
                                    one, max_punches=5)
    assert batch.rejected[0].startswith("office_mismatch")
    assert batch.digest == wire.decode_punch_batch(
        {**_doc(punch(office_code="1801.02")), "gateway": {"office_code": "1801.01"}}, "1801.01", max_punches=5).digest
    with pytest.raises(wire.OfficeMismatch):
        wire.decode_punch_batch({**_doc(), "gateway": {"office_code": "1801"}}, one, max_punches=5)
    # A tier whose token names one office says "tier": its own code is no claim to that office.
    wire.decode_punch_batch(_doc(), one, max_punches=5)
    # A multi-office token: the meta's office is the tier's own, never compared.
    wire.decode_punch_batch({**_doc(), "gateway": {"office_code": "9999"}}, TIER, max_punches=5)


def test_a_tier_health_report_keeps_each_device_office_and_rejects_the_others_alone() -> None:
    devices = [{**_device("a"), "office_code": "1801.01"}, {**_device("b"), "office_code": "1802.01"}, _device("c")]
    report = wire.decode_health_report(_doc() | {"devices": devices}, TIER, max_devices=5)
    assert [(d["device_id"], d["office_code"]) for d in report.devices] == [("a", "1801.01")]
    assert report.rejected[1].startswith("office_out_of_scope") and report.rejected[2].startswith("missing_office")


def _device(device_id: str) -> dict[str, Any]:
    return {"device_id": device_id, "serial": f"SN-{device_id}", "health": {"state": "online"}}


def test_an_office_gateways_documents_are_unchanged_and_a_tiers_say_so() -> None:
    args: dict[str, Any] = {"office_code": "1801.01", "office_name": None, "hostname": "h", "version": "1",
                            "outbox_depth": 0, "oldest_unforwarded_s": None}
    assert "tier" not in wire.gateway_meta(**args)
    assert wire.gateway_meta(**args, tier=True)["tier"] is True


# --------------------------------------------------------------------------------------------------
# Ingest: per-punch offices, bindings, receipts, outbox rows (SQLite and PostgreSQL)
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def central(db_url: str, tmp_path: Path) -> Iterator[Central]:
    c = make_central(db_url, tmp_path)
    try:
        yield c
    finally:
        c.client.close()
        c.engine.dispose()


def _tier_token(central: Central, tmp_path: Path, offices: list[str]) -> str:
    token = add_token(tmp_path / "gateways.toml", "kab-1801", offices, "gateway")
    remember(token)
    return token


def _outbox_rows(central: Central) -> int:
    with central.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.outbox)).scalar_one())


@pytest.mark.parametrize("forward", [False, True])
def test_a_tier_batch_is_stored_per_office_idempotently_with_outbox_rows_for_new_punches_only(
        central: Central, tmp_path: Path, forward: bool) -> None:
    token = _tier_token(central, tmp_path, ["1801.*"])
    central.api.forward_upstream = forward
    punches = [punch(office_code="1801.03", serial="S3"), punch(office_code="1801.04", serial="S4"),
               punch(office_code="1801.04", serial="S4", user="8"), punch(office_code="1802.01", serial="S9")]
    r = central.ingest(punches, token=token, batch_id="t-1", gateway={"office_code": "1801", "tier": True})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["new"], answer["rejected"], answer["office_code"]) == (3, 1, "1801")
    assert answer["results"][3]["reason"].startswith("office_out_of_scope")
    gws = central.get("/api/v1/gateways", token=central.bkd_all).json()["items"]
    assert ("kab-1801", "1801") in {(g["name"], g["office_code"]) for g in gws}
    # Serial S3 is bound to the office of its first punch: 1801.05 cannot take it over.
    squat = central.ingest([punch(office_code="1801.05", serial="S3", user="9")], token=token, batch_id="t-0").json()
    assert squat["results"][0]["reason"].startswith("serial_bound_elsewhere: serial S3 belongs to office 1801.03")
    rows = central.get("/api/v1/punches", token=central.bkd_all).json()["items"]
    assert sorted((x["office_code"], x["device_serial"]) for x in rows) == [
        ("1801.03", "S3"), ("1801.04", "S4"), ("1801.04", "S4")]
    assert _outbox_rows(central) == (3 if forward else 0)
    # The same batch again is a replay of the receipt; the same punches in another batch are duplicates.
    again = central.ingest(punches, token=token, batch_id="t-1", gateway={"office_code": "1801", "tier": True})
    assert again.json() == answer and again.headers.get("X-Fpgw-Replayed") == "1"
    dup = central.ingest(punches[:3], token=token, batch_id="t-2").json()
    assert (dup["new"], dup["duplicates"]) == (0, 3)
    assert central.count() == 3 and _outbox_rows(central) == (3 if forward else 0)
    # The same punch key under another office is another punch (the key leads with the office).
    other = central.ingest([punch(serial="S5", office_code="1801.06")], token=token, batch_id="t-3").json()
    assert other["new"] == 1
    # Its gateways row carries the code it last named as its own; its scope when it names none.
    gws = central.get("/api/v1/gateways", token=central.bkd_all).json()["items"]
    assert ("kab-1801", "1801.*") in {(g["name"], g["office_code"]) for g in gws}


def test_a_reader_scoped_by_pattern_sees_exactly_its_offices(central: Central, tmp_path: Path) -> None:
    token = _tier_token(central, tmp_path, ["1801.*", "1802.01"])
    sent = [punch(office_code=o, serial=f"S-{o}") for o in ("1801.01", "1801.02", "1802.01")]
    assert central.ingest(sent, token=token).json()["new"] == 3
    reader = add_token(tmp_path / "api.toml", "kab-reader", ["1801.*"], "api")
    remember(reader)
    seen = central.get("/api/v1/punches", token=reader).json()["items"]
    assert sorted(x["office_code"] for x in seen) == ["1801.01", "1801.02"]
    assert central.get("/api/v1/punches", token=reader, office="1802.01").status_code == 403
    assert [x["office_code"] for x in central.get("/api/v1/punches", token=reader, office="1801.02")
            .json()["items"]] == ["1801.02"]


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

def _central_doc(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    for name in ("gw.toml", "api.toml", "up-token"):
        (tmp_path / name).write_text("")
    return {"site": {"office_code": "1801", "state_dir": str(tmp_path)}, "database": {"url": "sqlite://"},
            "central": {"enabled": True, "gateway_tokens_file": "gw.toml", "api_tokens_file": "api.toml"}, **extra}


def test_central_upstream_becomes_the_daemons_forwarding_link(tmp_path: Path) -> None:
    doc = _central_doc(tmp_path)
    doc["central"]["upstream"] = {"url": "https://bkn.example.go.id", "token_file": "up-token", "batch_size": 2000}
    (tmp_path / "up-token").write_text("t0ken\n")
    cfg = parse_config(doc, base_dir=tmp_path)
    assert cfg.central.upstream is not None and cfg.forward is cfg.central.upstream
    assert (cfg.forward.url, cfg.forward.batch_size, cfg.forward.token) == ("https://bkn.example.go.id", 2000, "t0ken")
    assert "t0ken" in cfg.secrets()


@pytest.mark.parametrize(("change", "message"), [
    ({"forward": {"url": "https://x.example", "token_file": "up-token"}}, "both set"),
    ({"central_enabled": False}, "enabled is not true"),
    ({"upstream": {"token_file": "up-token"}}, "url is required in [central.upstream]"),
    ({"upstream": {"url": "http://bkn.example.go.id", "token_file": "up-token"}}, "central.upstream.url"),
    ({"upstream": {"url": "https://bkn.example.go.id"}}, "needs this gateway's token"),
    ({"upstream": {"url": "https://bkn.example.go.id", "token_file": "up-token", "batch": 5}},
     "central.upstream.batch: unknown key"),
])
def test_a_wrong_central_upstream_is_a_clear_config_error(tmp_path: Path, change: dict[str, Any],
                                                          message: str) -> None:
    doc = _central_doc(tmp_path)
    (tmp_path / "up-token").write_text("t0ken\n")
    doc["central"]["upstream"] = change.pop("upstream", {"url": "https://bkn.example.go.id",
                                                         "token_file": "up-token"})
    if change.pop("central_enabled", True) is False:
        doc["central"] = {"upstream": doc["central"]["upstream"]}
    doc.update(change)
    with pytest.raises(ConfigError) as err:
        parse_config(doc, base_dir=tmp_path)
    assert message in str(err.value)


def test_the_commented_central_upstream_example_is_valid(tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text(encoding="utf-8")
    block = re.search(r"^# \[central\.upstream\]\n((?:# [a-z_]+ = .*\n)+)", text, re.M)
    assert block is not None, "config.example.toml lacks the commented [central.upstream] example"
    upstream = tomllib.loads(block.group(1).replace("# ", "", -1))
    upstream["token_file"] = "up-token"
    doc = _central_doc(tmp_path)
    (tmp_path / "up-token").write_text("t0ken\n")
    doc["central"]["upstream"] = upstream
    cfg = parse_config(doc, base_dir=tmp_path)
    assert cfg.forward.url.startswith("https://") and cfg.forward.batch_size == upstream["batch_size"]


# --------------------------------------------------------------------------------------------------
# Dashboard: a pattern-scoped reader
# --------------------------------------------------------------------------------------------------

def test_the_dashboard_shows_a_pattern_scoped_reader_exactly_its_offices(db_url: str, tmp_path: Path) -> None:
    from tests.support.dashboard import make_regency, terminal

    regency = make_regency(db_url, tmp_path, ["1801.01", "1801.02", "1802.01"])
    try:
        reader = add_token(tmp_path / "api.toml", "kab-1801", ["1801.*"], "api")
        remember(reader)
        headers = {"Authorization": f"Bearer {reader}"}
        with regency.client() as c:
            for office in ("1801.01", "1801.02", "1802.01"):
                regency.report_health(c, office, [terminal("lobi")])
            page = c.get("/", headers=headers)
            assert page.status_code == 200
            assert sorted(re.findall(r'<section class="office" id="o-([^"]+)"', page.text)) == ["1801.01", "1801.02"]
            assert c.get("/terminal/1802.01/lobi", headers=headers).status_code == 404
            assert c.get("/terminal/1801.02/lobi", headers=headers).status_code == 200
            # Several offices: the monthly report needs one of them named, and only one of its own.
            assert c.get("/report", params={"month": "2026-11"}, headers=headers).status_code == 400
            assert c.get("/report", params={"month": "2026-11", "office": "1802.01"},
                         headers=headers).status_code == 403
    finally:
        regency.engine.dispose()
