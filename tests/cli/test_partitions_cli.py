"""`fpgw central partitions` and the daemon's partition maintenance job (gateway.retention) on PostgreSQL: list,
maintain (creates months, moves default rows), archive + verify + restore, a month kept when its archive fails;
on SQLite the commands say there are no partitions and the daemon adds no job."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.retention import PartitionMaintenance, services
from gateway.store import partitions as parts
from gateway.store.central import CentralStore
from gateway.store.db import create_db_engine, upgrade
from tests.support.cli import run_cli
from tests.support.config import write_toml
from tests.support.punches import make_punch

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, url: str, **retention: Any) -> dict[str, Any]:
    return {"site": {"office_code": "1801", "state_dir": str(tmp_path / "state")}, "database": {"url": url},
            "retention": {"archive_dir": str(tmp_path / "archive"), **retention}}


def _seed(url: str) -> None:
    engine = create_db_engine(url, pool_size=1)
    try:
        upgrade(engine)
        far = parts.add_months(datetime.now(UTC).date().replace(day=1), 7)
        punches = [make_punch(str(i), datetime(2023, 5, 1 + i, 7, 0), office_code="1801.01") for i in range(5)]
        punches.append(make_punch("far", datetime(far.year, far.month, 2, 7, 0), office_code="1801.01"))
        CentralStore(engine).ingest_punches(gateway="gw", office_code="1801.01", batch_id="b", digest="d",
                                            punches=punches, rejected={})
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_list_maintain_archive_verify_and_restore(pg_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _seed(pg_url)
    capsys.readouterr()  # the seeding's own log lines
    cfg = str(write_toml(_config(tmp_path, pg_url), tmp_path / "fpgw.toml"))
    code, out, _ = run_cli(capsys, "--config", cfg, "central", "partitions", "list", "--exact", "--json")
    listed = json.loads(out)
    assert code == 0 and listed[-1]["name"] == parts.DEFAULT_PARTITION and listed[-1]["rows"] == 6

    code, out, _ = run_cli(capsys, "--config", cfg, "central", "partitions", "maintain", "--months-ahead", "8")
    assert code == 0 and "created punches_2023_05 (5 rows moved from the default partition)" in out
    assert "1 rows moved" in out  # the far month, now within the horizon
    code, out, _ = run_cli(capsys, "--config", cfg, "central", "partitions", "list")
    assert code == 0 and "punches_2023_05" in out and "2023-05" in out

    code, out, _ = run_cli(capsys, "--config", cfg, "central", "partitions", "archive", "2023-05")
    assert code == 0 and "archived punches_2023_05: 5 rows" in out and "(dropped)" in out
    manifest = tmp_path / "archive" / "punches_2023_05.manifest.json"
    code, out, _ = run_cli(capsys, "central", "partitions", "verify", str(manifest))
    assert code == 0 and out.startswith("ok ") and "5 rows of punches_2023_05" in out
    code, out, _ = run_cli(capsys, "--config", cfg, "central", "partitions", "restore", str(manifest))
    assert code == 0 and "5 of 5 rows inserted" in out

    code, out, _ = run_cli(capsys, "--config", cfg, "central", "partitions", "archive", "2023-13")
    assert code == 1
    code, out, _ = run_cli(capsys, "--config", cfg, "central", "partitions", "archive", "1999-01")
    assert code == 1 and "kept punches_1999_01: no partition" in out


@pytest.mark.postgres
def test_the_daemon_job_creates_months_and_keeps_a_month_whose_archive_fails(pg_url: str, tmp_path: Path) -> None:
    _seed(pg_url)
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    config = parse_config(_config(tmp_path, pg_url, archive_after_months=12, archive_dir=str(blocked),
                                  months_ahead=8), base_dir=tmp_path)
    engine = create_db_engine(pg_url, pool_size=2)
    try:
        ctx: Any = SimpleNamespace(config=config, store=SimpleNamespace(engine=engine), scheduler=None)
        [job] = services(ctx)
        assert isinstance(job, PartitionMaintenance)
        result = job.run()
        assert result is not None and "punches_2023_05" in result.created
        assert "punches_2023_05" in result.refused and result.archived == []
        assert parts.list_partitions(engine, exact=True)[0].rows == 5  # kept, every row
    finally:
        engine.dispose()


def test_sqlite_has_no_partition_job_and_the_commands_say_why(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'fpgw.db'}"
    config = parse_config(_config(tmp_path, url), base_dir=tmp_path)
    engine = create_db_engine(url, pool_size=1)
    try:
        upgrade(engine)
        assert services(SimpleNamespace(config=config, store=SimpleNamespace(engine=engine))) == []  # type: ignore[arg-type]
    finally:
        engine.dispose()
    cfg = str(write_toml(_config(tmp_path, url), tmp_path / "fpgw.toml"))
    code, _, err = run_cli(capsys, "--config", cfg, "central", "partitions", "list")
    assert code == 1 and "partitions exist on PostgreSQL only" in err


def test_retention_config_defaults_and_checks(tmp_path: Path) -> None:
    config = parse_config(_config(tmp_path, ""), base_dir=tmp_path)
    assert config.retention.archive_after_months == 0 and config.retention.months_ahead == 3
    with pytest.raises(Exception, match="archive_after_months"):
        parse_config(_config(tmp_path, "", archive_after_months=1), base_dir=tmp_path)


@pytest.mark.postgres
def test_the_daemon_adds_the_partition_job_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    from gateway.app import Gateway

    doc = {**_config(tmp_path, pg_url), "http": {"enabled": False}}
    gateway = Gateway(parse_config(doc, base_dir=tmp_path))
    try:
        assert "partitions" in [s.name for s in gateway.services]
    finally:
        gateway.stop()
