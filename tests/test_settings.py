"""Settings: defaults, validation naming the variable, and the README documents every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from learnpulse.errors import ConfigError
from learnpulse.settings import Settings, load_settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    s = load_settings()
    assert s.database_url == "sqlite:///learnpulse.db"
    assert s.learnpulse_timezone == "Asia/Seoul" and s.timezone.key == "Asia/Seoul"
    assert (s.lookback_weeks, s.brms_iter, s.brms_chains, s.brms_family) == (12, 1000, 2, "gaussian")
    assert s.brms_sampler == "nuts"
    assert (s.prophet_lookback_weeks, s.prophet_forecast_weeks, s.prophet_anomaly_threshold) == (12, 4, 2.5)
    assert (s.survival_lookback_days, s.survival_event_threshold_days, s.survival_update_kpi) == (90, 14, True)
    assert (s.cluster_lookback_weeks, s.cluster_n_clusters, s.cluster_method) == (12, None, "kmeans")


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("LEARNPULSE_TIMEZONE", "Mars/Olympus", "unknown IANA time zone"),
        ("BRMS_CHAINS", "two", "integer"),
        ("BRMS_FAMILY", "poisson", "gaussian"),
        ("BRMS_SAMPLER", "hmc", "gibbs"),
        ("SURVIVAL_UPDATE_KPI", "maybe", "bool"),
        ("CLUSTER_N_CLUSTERS", "1", "greater than or equal to 2"),
        ("DATABASE_URL", "mysql://x/y", "sqlite"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.details["variable"] == variable
    assert variable in info.value.message and fragment in info.value.message


def test_the_gibbs_sampler_needs_the_binomial_family(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRMS_SAMPLER", "gibbs")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.details["variable"] == "BRMS_SAMPLER" and "binomial" in info.value.message
    monkeypatch.setenv("BRMS_FAMILY", "binomial")
    assert load_settings().brms_sampler == "gibbs"


def test_empty_cluster_count_means_automatic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_N_CLUSTERS", "")
    assert load_settings().cluster_n_clusters is None


def test_postgres_urls_get_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:secret@db/learn")
    assert load_settings().database_url == "postgresql+psycopg://u:secret@db/learn"


def test_dotenv_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOOKBACK_WEEKS", raising=False)
    (tmp_path / ".env").write_text("LOOKBACK_WEEKS=8\nBRMS_ITER=400\n")
    monkeypatch.setenv("BRMS_ITER", "2000")
    s = load_settings()
    assert s.lookback_weeks == 8 and s.brms_iter == 2000


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README.read_text(), flags=re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - documented == set(), "settings missing from the README table"
    assert documented - fields == set(), "README documents settings that do not exist"


def test_api_token_from_environment_or_file_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEARNPULSE_API_TOKEN", raising=False)
    monkeypatch.delenv("LEARNPULSE_API_TOKEN_FILE", raising=False)
    assert load_settings().api_token() is None
    monkeypatch.setenv("LEARNPULSE_API_TOKEN", "s3cr3t-value")
    settings = load_settings()
    assert settings.api_token() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(settings) and "s3cr3t-value" not in str(settings.model_dump())

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("LEARNPULSE_API_TOKEN_FILE", str(token_file))
    with pytest.raises(ConfigError, match="not both"):
        load_settings().api_token()
    monkeypatch.delenv("LEARNPULSE_API_TOKEN")
    assert load_settings().api_token() == "from-file"
    token_file.write_text("  \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings().api_token()
    monkeypatch.setenv("LEARNPULSE_API_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings().api_token()
