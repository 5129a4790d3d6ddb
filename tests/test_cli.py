"""The learnpulse command, run as a user runs it: exit codes, messages, and what lands in the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from learnpulse.store.db import make_engine
from tests.helpers import attempts_frame, cli, count, load_batch


def test_db_upgrade_then_build_kpi_then_jobs(db_url: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": db_url}
    first = cli("db", "upgrade", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "from empty" in first.stdout
    again = cli("db", "upgrade", env=env, cwd=tmp_path)
    assert "unchanged" in again.stdout

    engine = make_engine(db_url)
    load_batch(engine, attempts_frame([(1, 1, True, "2026-03-02T10:00:00+09:00", 5.0)]))
    ran = cli("run", "build-kpi", "--as-of", "2026-03-08", env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert '"rows_written": 2' in ran.stdout
    assert count(engine, "weekly_kpi") == 1

    listed = cli("jobs", env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "build-kpi" in listed.stdout and "succeeded" in listed.stdout


def test_errors_are_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    bad_zone = cli("db", "upgrade", env={"LEARNPULSE_TIMEZONE": "Mars/Base"}, cwd=tmp_path)
    assert bad_zone.returncode == 2
    assert "LEARNPULSE_TIMEZONE" in bad_zone.stderr and "Traceback" not in bad_zone.stderr

    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    unknown = cli("run", "no-such-job", env=env, cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown job 'no-such-job'" in unknown.stderr and "build-kpi" in unknown.stderr

    bad_date = cli("run", "build-kpi", "--as-of", "yesterday", env=env, cwd=tmp_path)
    assert bad_date.returncode == 2 and "--as-of" in bad_date.stderr


def test_secrets_in_the_database_url_are_not_printed(tmp_path: Path) -> None:
    result = cli("db", "upgrade", env={"DATABASE_URL": "postgresql://learn:hunter2@127.0.0.1:1/nowhere"}, cwd=tmp_path)
    assert result.returncode != 0
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["--help"], ["ingest", "--help"], ["db", "--help"]])
def test_help(command: list[str], tmp_path: Path) -> None:
    result = cli(*command, cwd=tmp_path)
    assert result.returncode == 0 and "Usage" in result.stdout


def test_ingest_through_the_cli_reports_rows_and_columns(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    assert cli("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    good = tmp_path / "attempts.csv"
    good.write_text(
        "attempt_id,user_id,item_id,topic_id,is_correct,answered_at,time_spent_s\n"
        "1,7,3,1,true,2026-03-02T21:15:00+09:00,31.5\n"
        "2,7,4,1,0,2026-03-02T12:16:00Z,\n"
    )
    loaded = cli("ingest", "attempts", str(good), env=env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert "2 added" in loaded.stdout
    again = cli("ingest", "attempts", str(good), env=env, cwd=tmp_path)
    assert "already loaded" in again.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("attempt_id,user_id,item_id,topic_id,is_correct,answered_at\n3,7,3,1,maybe,2026-03-02T21:15:00\n")
    rejected = cli("ingest", "attempts", str(bad), env=env, cwd=tmp_path)
    assert rejected.returncode == 2
    assert "bad.csv" in rejected.stderr and "is_correct" in rejected.stderr and "answered_at" in rejected.stderr
    assert "line 2" in rejected.stderr
    assert count(make_engine(env["DATABASE_URL"]), "attempt") == 2


def test_commands_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'new.db'}"}
    result = cli("run", "build-kpi", env=env, cwd=tmp_path)
    assert result.returncode == 2 and "learnpulse db upgrade" in result.stderr
