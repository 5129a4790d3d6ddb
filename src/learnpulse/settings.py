"""The one settings object, read from environment variables (names from the original system) and ``.env``.

``load_settings()`` validates every value once; a bad value raises ``ConfigError`` naming the variable. Each field
is documented in the README's settings table (a test keeps the two in step).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from learnpulse.engines.growth_options import Family, Sampler
from learnpulse.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///learnpulse.db"


class Settings(BaseSettings):
    """Every setting learnpulse reads. Field name = environment variable name, lower-cased."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True, case_sensitive=False
    )

    # --- core -------------------------------------------------------------------------------------------------
    database_url: str = Field(DEFAULT_DATABASE_URL, min_length=1)
    learnpulse_timezone: str = "Asia/Seoul"
    learnpulse_lock_wait_seconds: float = Field(0.0, ge=0)
    dask_scheduler_address: str | None = None

    # --- API (learnpulse serve) -----------------------------------------------------------------------------
    learnpulse_api_token: SecretStr | None = None
    learnpulse_api_token_file: Path | None = None
    learnpulse_api_max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)

    # --- fit-bayesian-growth ----------------------------------------------------------------------------------
    lookback_weeks: int = Field(12, ge=2, le=520)
    brms_iter: int = Field(1000, ge=20)
    brms_chains: int = Field(2, ge=1, le=64)
    brms_family: Family = "gaussian"
    # nuts: NUTS on every parameter; gibbs (binomial only): NUTS on the population within a Gibbs sweep whose units
    # take Metropolis-Hastings steps, ~4x faster at 100,000 students (engines/growth_gibbs.py).
    brms_sampler: Sampler = "nuts"
    metrics_use_bayesian: bool = False

    # --- forecast-prophet -------------------------------------------------------------------------------------
    prophet_lookback_weeks: int = Field(12, ge=3, le=520)
    prophet_forecast_weeks: int = Field(4, ge=1, le=104)
    prophet_anomaly_threshold: float = Field(2.5, gt=0)

    # --- fit-survival-churn -----------------------------------------------------------------------------------
    survival_lookback_days: int = Field(90, ge=14)
    survival_event_threshold_days: int = Field(14, ge=1)
    survival_update_kpi: bool = True

    # --- detect-inactivity ------------------------------------------------------------------------------------
    inactivity_days: int = Field(7, ge=1)
    # Churn-risk tiers on S: medium from INACTIVITY_TIER_MEDIUM, high from INACTIVITY_TIER_HIGH (0 < medium < high < 1).
    inactivity_tier_medium: float = Field(0.25, gt=0, lt=1)
    inactivity_tier_high: float = Field(0.5, gt=0, lt=1)

    # --- cluster-segments -------------------------------------------------------------------------------------
    cluster_lookback_weeks: int = Field(12, ge=1, le=520)
    cluster_n_clusters: int | None = Field(None, ge=2, le=50)
    cluster_method: Literal["kmeans", "gmm"] = "kmeans"

    @field_validator(
        "cluster_n_clusters",
        "dask_scheduler_address",
        "learnpulse_api_token",
        "learnpulse_api_token_file",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # The original CronJobs set CLUSTER_N_CLUSTERS="" to mean "choose automatically".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("inactivity_tier_high")
    @classmethod
    def _tiers_in_order(cls, value: float, info: ValidationInfo) -> float:
        medium = info.data.get("inactivity_tier_medium")  # absent when medium itself was invalid
        if medium is not None and not value > medium:
            raise ValueError(f"must be greater than INACTIVITY_TIER_MEDIUM ({medium})")
        return value

    @field_validator("brms_sampler")
    @classmethod
    def _sampler_fits_family(cls, value: str, info: ValidationInfo) -> str:
        family = info.data.get("brms_family")  # absent when the family itself was invalid
        if value == "gibbs" and family == "gaussian":
            raise ValueError("gibbs is for BRMS_FAMILY=binomial (the gaussian family's units are integrated out)")
        return value

    @field_validator("learnpulse_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        value = value.strip()
        if value.startswith(("postgres://", "postgresql://")):
            # psycopg 3 is the driver we ship; plain URLs from secret stores should just work.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite://", "postgresql+psycopg://")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @cached_property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.learnpulse_timezone)

    def api_token(self) -> str | None:
        """The API bearer token from LEARNPULSE_API_TOKEN or the file LEARNPULSE_API_TOKEN_FILE (a mounted secret).

        Raises ConfigError (never showing the token) when both are set or the file is missing or empty.
        """
        if self.learnpulse_api_token is not None and self.learnpulse_api_token_file is not None:
            raise ConfigError(
                "set LEARNPULSE_API_TOKEN or LEARNPULSE_API_TOKEN_FILE, not both",
                {"variable": "LEARNPULSE_API_TOKEN_FILE"},
            )
        if self.learnpulse_api_token_file is not None:
            path = self.learnpulse_api_token_file
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"LEARNPULSE_API_TOKEN_FILE: cannot read {path}: {exc.strerror}",
                    {"variable": "LEARNPULSE_API_TOKEN_FILE"},
                ) from None
            if not token:
                raise ConfigError(
                    f"LEARNPULSE_API_TOKEN_FILE: {path} is empty", {"variable": "LEARNPULSE_API_TOKEN_FILE"}
                )
            return token
        if self.learnpulse_api_token is not None:
            token = self.learnpulse_api_token.get_secret_value().strip()
            if not token:
                raise ConfigError("LEARNPULSE_API_TOKEN is empty", {"variable": "LEARNPULSE_API_TOKEN"})
            return token
        return None


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings; ``overrides`` (field names) win over the environment."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        variable = str(first["loc"][0]).upper() if first["loc"] else "?"
        problems = [
            {"variable": str(e["loc"][0]).upper() if e["loc"] else "?", "problem": e["msg"]} for e in exc.errors()
        ]
        raise ConfigError(
            f"invalid setting {variable}: {first['msg']}", {"variable": variable, "problems": problems}
        ) from None
