"""A simulated exam-prep school with known truth (``learnpulse generate``).

Pure simulation: NumPy and pandas only, no SQL (``learnpulse.store.world`` writes a world to the database).
Same ``WorldParams`` => identical frames, bit for bit.

The model of the world (days ``d = 0 .. 7*weeks-1`` are local calendar days in ``params.timezone`` counted from
``start_date``, a Monday; week ``w = d // 7``):

- **Learner types** ``k`` (``DEFAULT_LEARNER_TYPES``, drawn with probabilities ``share``) set each student's
  behaviour: engagement ``e_i = clip(E_k * LN1(engagement_sd), 0.02, 0.97)`` (``LN1(s) = exp(s*z - s²/2)``, a
  mean-one log-normal), attempts per active day ``A_i = max(1.05, A_k * LN1(attempts_per_day_sd))``, starting
  ability ``theta0_i ~ N(mu_k, sd_k)``, weekly growth ``g_i ~ N(g_k, gsd_k)``, regularity
  ``r_i ~ Beta(rho_k*c, (1-rho_k)*c)`` and topic breadth ``1 + Binomial(n_topics-1, breadth_k)`` topics.
- **Items** (2PL): item ``j`` belongs to topic ``t(j)`` (contiguous blocks of ids), ``a_j = clip(LN(0, a_sd),
  0.4, 2.5)``, ``b_j = clip(beta_t + N(0, item_b_sd), -3.5, 3.5)`` with ``beta_t ~ N(0, topic_b_sd)``;
  ``P(correct) = 1 / (1 + exp(-a_j (theta - b_j)))``.
- **Ability** in week ``w``: ``theta_iw = theta0_i + g_i * w + delta_iw`` (``delta`` = anomaly effect, else 0).
  ``theta0`` is the ability at ``start_date`` (week 0), whatever the enrolment day.
- **Activity**: ``enrol_day ~ U{0 .. enrol_spread_days-1}`` (always active that day). On day ``d`` the student
  is active with probability ``clip(e_i * M_iw, 0, 0.97)``, where the weekly multiplier
  ``M_iw = LN1(irregularity_sd * (1 - r_i))`` makes irregular students bursty. An active day has
  ``1 + Poisson(A_i - 1)`` attempts, each on a topic drawn uniformly from the student's topics and an item drawn
  uniformly within the topic; correctness ~ Bernoulli(P(correct)).
- **Timestamps**: one session per active day, starting at local hour ``N(pref_i, session_sd_i)`` (``pref_i ~
  N(evening_hour, evening_hour_sd)``; a share ``daytime_share`` of sessions at ``N(14, 2.5)`` instead), wrapped
  into the day, so some sessions fall just after local midnight (15:00–15:59 UTC in Seoul). Answers follow one
  another by ``time_spent + Exp(gap_mean_s)``; ``time_spent ~ LN(log(median), sd)`` seconds, recorded as NaN with
  probability ``time_missing_rate``. Local times are converted to UTC with the zone's rules.
- **Churn**: daily hazard ``h_i = h0 * exp(beta . x_i)``, ``x_i = (z(e_i), z(theta0_i), z(r_i))`` standardised
  with the population (mixture) mean and SD of each covariate (``World.truth_parameters()['hazard']``).
  ``churn_day = enrol_day + 1 + floor(Exp(1) / h_i)``; from ``churn_day`` on the student never answers again.
  ``churn_day`` is None when it falls after the world. ``hazard_lp = beta . x_i``.
- **Goals**: deadline ``= world end + U{goal_min_weeks*7 .. goal_max_weeks*7}`` days; accuracy ``acc_i(theta)`` =
  the student's expected accuracy on their own practice: the mean over their topics of ``mean_j P_j(theta)`` over
  the topic's items (answers are drawn exactly so; version 1 averaged over the whole bank, which the student's
  accuracy never measures); ``accuracy_at_deadline = acc(theta0 + g_i * deadline_week)``
  (the latent trajectory, churned or not). Students aim where a typical learner of their type would get:
  ``target = clip(round(acc(theta0 + g_k * deadline_week) + N(0, goal_target_sd), 2), goal_target_min,
  goal_target_max)``, so ``goal_reached = accuracy_at_deadline >= target`` mostly says whether the student grows
  faster than their type's mean (about half do).
- **Anomalies**: each student-week with ``w >= enrol_week + anomaly_warmup_weeks``, ``w <= weeks - 2`` and at
  least ``anomaly_min_attempts`` attempts is a sudden ``drop`` with probability ``anomaly_rate``:
  ``delta_iw = anomaly_effect`` (-2.5 logits) for that week only.

Randomness: one ``numpy.random.Generator`` per purpose and block, seeded by ``SeedSequence(seed, spawn_key=...)``
(items: ``(0,)``; students ``block*B .. block*B+B-1``: ``(1, block)`` with ``B = block_students``). Blocks are
simulated independently, one at a time (bounded memory), so the first ``m*B`` students of a bigger world are the
same students with the same answers. Ids: ``user_id`` 1..N, ``item_id`` 1..n_items, ``topic_id`` 1..n_topics,
``attempt_id`` 1..M in the order of ``(answered_at, user_id)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from learnpulse.errors import InvalidInputError

SIMULATOR_VERSION = 2
"""Bumped whenever the same parameters would produce a different world."""

_DAY_US = 86_400_000_000
_EPOCH = date(1970, 1, 1)

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(frozen=True)
class LearnerType:
    """One latent kind of learner: the behaviour its students are drawn around."""

    name: str
    share: float  # probability that a student is of this type (normalised over the types)
    engagement: float  # mean probability of being active on a day
    attempts_per_day: float  # mean attempts on an active day
    theta0_mean: float  # starting ability (logits)
    theta0_sd: float
    growth_mean: float  # ability gain per week (logits)
    growth_sd: float
    regularity: float  # mean regularity in (0, 1): 1 = equally active every week, 0 = very bursty
    topic_breadth: float  # probability of studying each topic beyond the first


DEFAULT_LEARNER_TYPES: tuple[LearnerType, ...] = (
    LearnerType("steady high-achievers", 0.25, 0.85, 5.5, 1.3, 0.4, 0.04, 0.02, 0.92, 0.85),
    LearnerType("irregular strugglers", 0.25, 0.45, 3.5, -1.5, 0.4, 0.01, 0.015, 0.20, 0.45),
    LearnerType("fast improvers", 0.25, 0.60, 4.5, -0.6, 0.4, 0.18, 0.03, 0.70, 0.60),
    LearnerType("casual dabblers", 0.25, 0.18, 1.8, 0.5, 0.4, 0.02, 0.015, 0.75, 0.15),
)


@dataclass(frozen=True)
class WorldParams:
    """Every knob of the simulator. ``dataclasses.asdict`` + ``to_json_dict`` give its JSON form."""

    students: int = 2000
    weeks: int = 16
    seed: int = 42
    start_date: date = date(2026, 3, 2)  # a Monday: first local day of the world
    timezone: str = "Asia/Seoul"
    # items
    n_items: int = 400
    n_topics: int = 10
    item_a_log_sd: float = 0.3
    topic_b_sd: float = 0.5
    item_b_sd: float = 0.9
    # students
    learner_types: tuple[LearnerType, ...] = DEFAULT_LEARNER_TYPES
    enrol_spread_days: int = 21
    engagement_sd: float = 0.15  # log-scale student variation around the type's engagement
    attempts_per_day_sd: float = 0.2  # log-scale student variation around the type's attempts per day
    regularity_concentration: float = 30.0  # Beta concentration of a student's regularity around the type's
    irregularity_sd: float = 1.0  # log-SD of the weekly activity multiplier at regularity 0
    # timing of answers
    evening_hour: float = 21.5
    evening_hour_sd: float = 1.0  # spread of students' preferred hours
    session_hour_sd: float = 1.0  # day-to-day spread of a session's start (x (0.5 + 1 - regularity))
    daytime_share: float = 0.2
    time_spent_median_s: float = 45.0
    time_spent_log_sd: float = 0.6
    time_missing_rate: float = 0.05
    gap_mean_s: float = 15.0
    # churn: h_i = h0 * exp(beta . x_i) per day
    hazard_h0: float = 0.0028
    hazard_beta_engagement: float = -0.6
    hazard_beta_theta0: float = -0.3
    hazard_beta_regularity: float = -0.4
    # goals
    goal_min_weeks: int = 2
    goal_max_weeks: int = 12
    goal_target_sd: float = 0.05  # personal ambition around the type-typical accuracy at the deadline
    goal_target_min: float = 0.3
    goal_target_max: float = 0.95
    # anomalies
    anomaly_rate: float = 0.03
    anomaly_effect: float = -2.5
    anomaly_warmup_weeks: int = 4
    anomaly_min_attempts: int = 5
    # students per random-number block (and per generation step); part of the world's identity
    block_students: int = 1000

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise InvalidInputError(
                "invalid world parameters: " + "; ".join(f"{p['parameter']}: {p['reason']}" for p in problems),
                {"problems": problems},
            )

    @property
    def days(self) -> int:
        return 7 * self.weeks

    @property
    def end_date(self) -> date:
        """First local day after the world."""
        return self.start_date + timedelta(days=self.days)

    def to_json_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["start_date"] = self.start_date.isoformat()
        out["learner_types"] = [dataclasses.asdict(t) for t in self.learner_types]
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> WorldParams:
        """Inverse of ``to_json_dict`` (unknown keys are refused)."""
        values = dict(data)
        if "start_date" in values:
            values["start_date"] = date.fromisoformat(str(values["start_date"]))
        if "learner_types" in values:
            values["learner_types"] = tuple(LearnerType(**t) for t in values["learner_types"])
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InvalidInputError(f"unknown world parameters: {', '.join(unknown)}", {"unknown": unknown})
        return cls(**values)


def _validate(p: WorldParams) -> list[dict[str, str]]:
    problems: list[dict[str, str]] = []

    def bad(name: str, reason: str) -> None:
        problems.append({"parameter": name, "reason": reason})

    for name in ("students", "weeks", "n_items", "n_topics", "block_students", "enrol_spread_days"):
        if int(getattr(p, name)) < 1:
            bad(name, "must be at least 1")
    if p.n_items < p.n_topics:
        bad("n_items", "must be at least n_topics")
    if p.start_date.weekday() != 0:
        bad("start_date", f"{p.start_date.isoformat()} is not a Monday")
    try:
        ZoneInfo(p.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        bad("timezone", f"unknown IANA time zone {p.timezone!r}")
    if p.enrol_spread_days > p.days:
        bad("enrol_spread_days", "must not exceed the world's length in days")
    if not p.learner_types:
        bad("learner_types", "need at least one learner type")
    for t in p.learner_types:
        if t.share <= 0 or not 0 < t.engagement <= 1 or t.attempts_per_day < 1:
            bad("learner_types", f"{t.name!r}: share > 0, engagement in (0, 1], attempts_per_day >= 1")
        if not 0 < t.regularity < 1 or not 0 <= t.topic_breadth <= 1:
            bad("learner_types", f"{t.name!r}: regularity in (0, 1), topic_breadth in [0, 1]")
    for name in ("time_missing_rate", "anomaly_rate", "daytime_share"):
        if not 0 <= float(getattr(p, name)) <= 1:
            bad(name, "must be between 0 and 1")
    if p.hazard_h0 <= 0:
        bad("hazard_h0", "must be positive")
    if not 0 <= p.goal_min_weeks <= p.goal_max_weeks:
        bad("goal_min_weeks", "need 0 <= goal_min_weeks <= goal_max_weeks")
    if not 0 <= p.goal_target_min <= p.goal_target_max <= 1:
        bad("goal_target_min", "need 0 <= goal_target_min <= goal_target_max <= 1")
    return problems


# --- the truth that is not a random draw ---------------------------------------------------------------------


def covariate_moments(params: WorldParams) -> dict[str, dict[str, float]]:
    """Population mean and SD of each hazard covariate (the type mixture, before clipping)."""
    w = np.array([t.share for t in params.learner_types], dtype=np.float64)
    w /= w.sum()
    e = np.array([t.engagement for t in params.learner_types])
    m = np.array([t.theta0_mean for t in params.learner_types])
    s = np.array([t.theta0_sd for t in params.learner_types])
    r = np.array([t.regularity for t in params.learner_types])
    c = params.regularity_concentration

    def moments(means: FloatArray, second: FloatArray) -> dict[str, float]:
        mean = float(w @ means)
        return {"mean": mean, "sd": math.sqrt(max(float(w @ second) - mean * mean, 1e-12))}

    return {
        "engagement": moments(e, e * e * math.exp(params.engagement_sd**2)),
        "theta0": moments(m, s * s + m * m),
        "regularity": moments(r, r * (1 - r) / (c + 1) + r * r),
    }


def truth_parameters(params: WorldParams) -> dict[str, Any]:
    """The world's parameters and true effects, JSON-able; a function of ``params`` alone."""
    betas = {
        "engagement": params.hazard_beta_engagement,
        "theta0": params.hazard_beta_theta0,
        "regularity": params.hazard_beta_regularity,
    }
    return {
        "simulator_version": SIMULATOR_VERSION,
        "params": params.to_json_dict(),
        "learner_types": [{"learner_type": k + 1, **dataclasses.asdict(t)} for k, t in enumerate(params.learner_types)],
        "irt": {"model": "2PL", "p_correct": "1 / (1 + exp(-a * (theta - b)))", "scale": "logit"},
        "ability": {"theta": "theta0 + growth * week + anomaly_effect", "week": "(local day - start_date) // 7"},
        "hazard": {
            "h0_per_day": params.hazard_h0,
            "beta": betas,
            "hazard_ratio_per_sd": {k: math.exp(v) for k, v in betas.items()},
            "covariates": covariate_moments(params),
            "linear_predictor": "sum(beta[c] * (x[c] - mean[c]) / sd[c])",
            "churn_day": "enrol_day + 1 + floor(Exp(1) / (h0 * exp(hazard_lp)))",
        },
        "goals": {
            "accuracy": "mean over the item bank of P(correct | theta0 + growth * deadline_week)",
            "goal_reached": "accuracy_at_deadline >= target",
        },
        "anomalies": {
            "kind": "drop",
            "effect": params.anomaly_effect,
            "rate": params.anomaly_rate,
            "eligible": "week >= enrol_week + warmup, week <= weeks - 2, attempts >= anomaly_min_attempts",
        },
    }


# --- the world -----------------------------------------------------------------------------------------------


@dataclass
class World:
    """A simulated world: the observable data (``attempts``, ``goals``) and the truth behind it."""

    params: WorldParams
    attempts: pd.DataFrame  # attempt_id, user_id, item_id, topic_id, is_correct, answered_at, time_spent_s
    goals: pd.DataFrame  # user_id, target, deadline
    students: pd.DataFrame  # as table sim_student
    items: pd.DataFrame  # as table sim_item
    student_weeks: pd.DataFrame  # as table sim_student_week
    anomalies: pd.DataFrame  # as table sim_anomaly

    def truth_parameters(self) -> dict[str, Any]:
        return truth_parameters(self.params)

    def summary(self) -> dict[str, Any]:
        """Headline figures of the realised world (counts and rates)."""
        s = self.students
        return {
            "students": len(s),
            "items": len(self.items),
            "attempts": len(self.attempts),
            "churned": int(s["churn_day"].notna().sum()),
            "churn_rate": float(s["churn_day"].notna().mean()) if len(s) else 0.0,
            "goal_reached_rate": float(s["goal_reached"].mean()) if len(s) else 0.0,
            "anomalies": len(self.anomalies),
            "student_weeks": len(self.student_weeks),
        }


def expected_accuracy(theta: FloatArray, a: FloatArray, b: FloatArray, *, rows: int = 8192) -> FloatArray:
    """Mean 2PL probability of a correct answer over the items (a, b), for each ability in ``theta``."""
    theta = np.asarray(theta, dtype=np.float64)
    out = np.empty(theta.shape[0], dtype=np.float64)
    for start in range(0, theta.shape[0], rows):
        t = theta[start : start + rows, None]
        out[start : start + rows] = (1.0 / (1.0 + np.exp(-a[None, :] * (t - b[None, :])))).mean(axis=1)
    return out


def own_topic_accuracy(
    theta: FloatArray,
    studied: IntArray,
    *,
    topic_start: IntArray,
    topic_count: IntArray,
    a: FloatArray,
    b: FloatArray,
) -> FloatArray:
    """Expected accuracy of each student on their own practice: the mean over the student's topics (row ``i`` of
    ``studied``, 0-based topic ids padded with ``n_topics``) of the mean 2PL probability over the topic's items
    (``topic_start``/``topic_count`` index ``a``, ``b``), at ability ``theta[i]``: how answers are drawn."""
    n_topics = len(topic_start)
    per_topic = np.stack(
        [
            expected_accuracy(
                theta,
                a[topic_start[t] : topic_start[t] + topic_count[t]],
                b[topic_start[t] : topic_start[t] + topic_count[t]],
            )
            for t in range(n_topics)
        ],
        axis=1,
    )
    mask = np.zeros((len(theta), n_topics + 1), dtype=bool)
    mask[np.arange(len(theta))[:, None], studied] = True
    mask = mask[:, :n_topics]
    return cast(FloatArray, (per_topic * mask).sum(axis=1) / mask.sum(axis=1))


def _rng(params: WorldParams, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(params.seed, spawn_key=key))


def _ln1(rng: np.random.Generator, sd: FloatArray | float, size: int | tuple[int, ...]) -> FloatArray:
    """Mean-one log-normal multipliers."""
    sd_arr = np.asarray(sd, dtype=np.float64)
    return np.exp(sd_arr * rng.standard_normal(size) - 0.5 * sd_arr * sd_arr)


def _make_items(params: WorldParams) -> pd.DataFrame:
    rng = _rng(params, 0)
    n, t = params.n_items, params.n_topics
    topic = (np.arange(n, dtype=np.int64) * t) // n + 1
    topic_b = rng.normal(0.0, params.topic_b_sd, t)
    a = np.clip(np.exp(rng.normal(0.0, params.item_a_log_sd, n)), 0.4, 2.5)
    b = np.clip(topic_b[topic - 1] + rng.normal(0.0, params.item_b_sd, n), -3.5, 3.5)
    return pd.DataFrame({"item_id": np.arange(1, n + 1, dtype=np.int64), "topic_id": topic, "a": a, "b": b})


def _day_us(d: date) -> int:
    return (d - _EPOCH).days * _DAY_US


def _local_to_utc_us(local_us: IntArray, tz: str) -> IntArray:
    """Naive local wall-clock microseconds -> UTC microseconds (DST gaps shift forward, repeats take standard)."""
    if len(local_us) == 0:
        return local_us
    idx = pd.DatetimeIndex(local_us.astype("datetime64[us]"))
    utc = idx.tz_localize(tz, ambiguous=np.zeros(len(idx), dtype=bool), nonexistent="shift_forward")
    return np.asarray(utc.tz_convert("UTC").as_unit("us").asi8, dtype=np.int64)


@dataclass
class _Block:
    students: dict[str, np.ndarray[Any, Any]]
    weeks: dict[str, np.ndarray[Any, Any]]
    anomalies: dict[str, np.ndarray[Any, Any]]
    attempts: dict[str, np.ndarray[Any, Any]]


def _simulate_block(params: WorldParams, items: pd.DataFrame, block: int, first: int, n: int) -> _Block:
    """Students ``first+1 .. first+n`` (one random block)."""
    rng = _rng(params, 1, block)
    types = params.learner_types
    K, T, W, D = len(types), params.n_topics, params.weeks, params.days
    a_items = items["a"].to_numpy()
    b_items = items["b"].to_numpy()
    topic_of_item = items["topic_id"].to_numpy()
    topic_start = np.searchsorted(topic_of_item, np.arange(1, T + 1))
    topic_count = np.bincount(topic_of_item - 1, minlength=T)

    def per_type(attr: str) -> FloatArray:
        return np.array([getattr(t, attr) for t in types], dtype=np.float64)

    # --- students ---
    shares = per_type("share")
    k = rng.choice(K, size=n, p=shares / shares.sum())
    theta0 = rng.normal(per_type("theta0_mean")[k], per_type("theta0_sd")[k])
    growth = rng.normal(per_type("growth_mean")[k], per_type("growth_sd")[k])
    engagement = np.clip(per_type("engagement")[k] * _ln1(rng, params.engagement_sd, n), 0.02, 0.97)
    apd = np.maximum(1.05, per_type("attempts_per_day")[k] * _ln1(rng, params.attempts_per_day_sd, n))
    rho = per_type("regularity")[k]
    c = params.regularity_concentration
    regularity = rng.beta(rho * c, (1 - rho) * c)
    n_topics = 1 + rng.binomial(T - 1, per_type("topic_breadth")[k])
    topic_order = np.argsort(rng.random((n, T)), axis=1)  # the first n_topics[i] columns are i's topics
    topic_choice = np.where(np.arange(T)[None, :] < n_topics[:, None], topic_order, T)
    topic_list = np.sort(topic_choice, axis=1)  # studied topics (0-based) first, ascending; T = padding
    enrol = rng.integers(0, params.enrol_spread_days, n)
    pref_hour = rng.normal(params.evening_hour, params.evening_hour_sd, n)
    deadline_offset = rng.integers(7 * params.goal_min_weeks, 7 * params.goal_max_weeks + 1, n)
    ambition = rng.normal(0.0, params.goal_target_sd, n)

    mom = covariate_moments(params)
    lp = (
        params.hazard_beta_engagement * (engagement - mom["engagement"]["mean"]) / mom["engagement"]["sd"]
        + params.hazard_beta_theta0 * (theta0 - mom["theta0"]["mean"]) / mom["theta0"]["sd"]
        + params.hazard_beta_regularity * (regularity - mom["regularity"]["mean"]) / mom["regularity"]["sd"]
    )
    wait = rng.exponential(1.0, n) / (params.hazard_h0 * np.exp(lp))
    churn = enrol + 1 + np.floor(np.minimum(wait, 10.0 * D)).astype(np.int64)
    end = np.minimum(churn, D)  # first day without activity (D if the student stays)

    # --- activity ---
    weekly = _ln1(rng, (params.irregularity_sd * (1 - regularity))[:, None], (n, W))
    p_day = np.clip(np.repeat(engagement[:, None] * weekly, 7, axis=1), 0.0, 0.97)
    day = np.arange(D)[None, :]
    active = rng.random((n, D)) < p_day
    active |= day == enrol[:, None]
    active &= (day >= enrol[:, None]) & (day < end[:, None])
    cell_user, cell_day = np.nonzero(active)  # by student, then day
    counts = 1 + rng.poisson(apd[cell_user] - 1.0)
    week_attempts = np.zeros((n, W), dtype=np.int64)
    np.add.at(week_attempts, (cell_user, cell_day // 7), counts)

    # --- anomalies and weekly ability ---
    week = np.arange(W)[None, :]
    enrol_week = enrol // 7
    eligible = (
        (week >= enrol_week[:, None] + params.anomaly_warmup_weeks)
        & (week <= W - 2)
        & (week_attempts >= params.anomaly_min_attempts)
    )
    anomalous = eligible & (rng.random((n, W)) < params.anomaly_rate)
    shift = np.where(anomalous, params.anomaly_effect, 0.0)
    theta_week = theta0[:, None] + growth[:, None] * week + shift

    last_week = (end - 1) // 7
    in_world = (week >= enrol_week[:, None]) & (week <= last_week[:, None])
    sw_user, sw_week = np.nonzero(in_world)
    sw_theta = theta_week[sw_user, sw_week]
    an_user, an_week = np.nonzero(anomalous)

    # --- goals ---
    deadline_day = D + deadline_offset
    deadline_week = deadline_day // 7
    studied = topic_choice  # (n, T): the student's topics (0-based), padded with T
    acc_deadline = own_topic_accuracy(
        theta0 + growth * deadline_week, studied, topic_start=topic_start, topic_count=topic_count, a=a_items, b=b_items
    )
    acc_typical = own_topic_accuracy(
        theta0 + per_type("growth_mean")[k] * deadline_week,
        studied,
        topic_start=topic_start,
        topic_count=topic_count,
        a=a_items,
        b=b_items,
    )
    target = np.clip(np.round(acc_typical + ambition, 2), params.goal_target_min, params.goal_target_max)

    # --- attempts ---
    m = int(counts.sum())
    att_cell = np.repeat(np.arange(len(counts)), counts)
    att_user = cell_user[att_cell]
    att_day = cell_day[att_cell]
    slot = np.floor(rng.random(m) * n_topics[att_user]).astype(np.int64)
    topic0 = topic_list[att_user, slot]
    item0 = topic_start[topic0] + np.floor(rng.random(m) * topic_count[topic0]).astype(np.int64)
    theta = theta_week[att_user, att_day // 7]
    p_correct = 1.0 / (1.0 + np.exp(-a_items[item0] * (theta - b_items[item0])))
    correct = rng.random(m) < p_correct
    spent = np.maximum(2.0, np.exp(rng.normal(math.log(params.time_spent_median_s), params.time_spent_log_sd, m)))
    spent = np.round(spent, 1)
    missing = rng.random(m) < params.time_missing_rate
    gap = rng.exponential(params.gap_mean_s, m)

    # one session per active day; answers follow one another
    step = spent + gap
    csum = np.cumsum(step)
    cell_first = np.cumsum(counts) - counts
    before = csum[cell_first] - step[cell_first]
    offset = csum - before[att_cell]
    session_len = csum[cell_first + counts - 1] - before
    daytime = rng.random(len(counts)) < params.daytime_share
    sd_hour = params.session_hour_sd * (0.5 + (1.0 - regularity[cell_user]))
    hour = np.where(
        daytime,
        rng.normal(14.0, 2.5, len(counts)),
        pref_hour[cell_user] + sd_hour * rng.standard_normal(len(counts)),
    )
    start_s = np.mod(hour * 3600.0, 86_400.0)
    start_s = np.clip(np.minimum(start_s, 86_400.0 - 1.0 - session_len), 0.0, None)
    local_us = (
        _day_us(params.start_date)
        + att_day.astype(np.int64) * _DAY_US
        + np.round((start_s[att_cell] + offset) * 1e6).astype(np.int64)
    )
    utc_us = _local_to_utc_us(local_us, params.timezone)

    uid = np.arange(first + 1, first + n + 1, dtype=np.int64)
    return _Block(
        students={
            "user_id": uid,
            "learner_type": (k + 1).astype(np.int64),
            "theta0": theta0,
            "growth": growth,
            "engagement": engagement,
            "attempts_per_day": apd,
            "regularity": regularity,
            "topics": n_topics.astype(np.int64),
            "enrol_day": enrol.astype(np.int64),
            "churn_day": np.where(churn < D, churn, -1).astype(np.int64),
            "hazard_lp": lp,
            "goal_target": target,
            "deadline_day": deadline_day.astype(np.int64),
            "accuracy_at_deadline": acc_deadline,
        },
        weeks={"user_id": uid[sw_user], "week": sw_week.astype(np.int64), "theta": sw_theta},
        anomalies={"user_id": uid[an_user], "week": an_week.astype(np.int64)},
        attempts={
            "user_id": uid[att_user],
            "item_id": (item0 + 1).astype(np.int64),
            "topic_id": (topic0 + 1).astype(np.int64),
            "is_correct": correct,
            "answered_us": utc_us,
            "time_spent_s": np.where(missing, np.nan, spent),
        },
    )


def _cat(blocks: list[dict[str, np.ndarray[Any, Any]]], key: str) -> np.ndarray[Any, Any]:
    return np.concatenate([b[key] for b in blocks])


def _pop_cat(parts: list[dict[str, np.ndarray[Any, Any]]], key: str) -> np.ndarray[Any, Any]:
    """Concatenate one column of every block, releasing the blocks' copies."""
    return np.concatenate([part.pop(key) for part in parts])


def _dates(start: date, days: IntArray) -> pd.Series:
    base = np.datetime64(start.isoformat(), "D")
    return pd.Series((base + days.astype("timedelta64[D]")).astype("datetime64[s]"))


def generate_world(params: WorldParams, progress: Callable[[int], None] | None = None) -> World:
    """Simulate the world described by ``params``; ``progress(students_done)`` after each block of students."""
    items = _make_items(params)
    blocks: list[_Block] = []
    for b, first in enumerate(range(0, params.students, params.block_students)):
        n = min(params.block_students, params.students - first)
        blocks.append(_simulate_block(params, items, b, first, n))
        if progress is not None:
            progress(first + n)

    # students
    st = {key: _cat([b.students for b in blocks], key) for key in blocks[0].students}
    names = np.array([t.name for t in params.learner_types], dtype=object)
    churn = st["churn_day"]
    students = pd.DataFrame(
        {
            "user_id": st["user_id"],
            "learner_type": st["learner_type"],
            "learner_type_name": names[st["learner_type"] - 1],
            "theta0": st["theta0"],
            "growth": st["growth"],
            "engagement": st["engagement"],
            "attempts_per_day": st["attempts_per_day"],
            "regularity": st["regularity"],
            "topics": st["topics"],
            "enrol_day": st["enrol_day"],
            "churn_day": pd.array(np.where(churn >= 0, churn, 0), dtype="Int64"),
            "hazard_lp": st["hazard_lp"],
            "goal_target": st["goal_target"],
            "goal_deadline": _dates(params.start_date, st["deadline_day"]),
            "accuracy_at_deadline": st["accuracy_at_deadline"],
            "goal_reached": st["accuracy_at_deadline"] >= st["goal_target"],
        }
    )
    students.loc[churn < 0, "churn_day"] = pd.NA
    students["learner_type_name"] = students["learner_type_name"].astype(str)
    goals = pd.DataFrame(
        {"user_id": students["user_id"], "target": students["goal_target"], "deadline": students["goal_deadline"]}
    )

    # weeks and anomalies
    a_items, b_items = items["a"].to_numpy(), items["b"].to_numpy()
    wk = {key: _cat([b.weeks for b in blocks], key) for key in ("user_id", "week", "theta")}
    student_weeks = pd.DataFrame(
        {
            "user_id": wk["user_id"],
            "week_start": _dates(params.start_date, 7 * wk["week"]),
            "theta": wk["theta"],
            "expected_accuracy": expected_accuracy(wk["theta"], a_items, b_items),
        }
    )
    an = {key: _cat([b.anomalies for b in blocks], key) for key in ("user_id", "week")}
    anomalies = pd.DataFrame(
        {
            "user_id": an["user_id"],
            "week_start": _dates(params.start_date, 7 * an["week"]),
            "kind": pd.Series(["drop"] * len(an["user_id"]), dtype=str),
            "effect": np.full(len(an["user_id"]), params.anomaly_effect),
        }
    )

    # attempts, in (answered_at, user_id) order: blocks are in user order, so a stable sort on time suffices
    parts = [b.attempts for b in blocks]
    del blocks
    ts = _pop_cat(parts, "answered_us")
    order = np.argsort(ts, kind="stable")
    ts = ts[order]
    cols: dict[str, Any] = {"attempt_id": np.arange(1, len(order) + 1, dtype=np.int64)}
    for key in ("user_id", "item_id", "topic_id", "is_correct"):
        cols[key] = _pop_cat(parts, key)[order]
    cols["answered_at"] = pd.DatetimeIndex(ts.view("datetime64[us]")).tz_localize("UTC")
    cols["time_spent_s"] = _pop_cat(parts, "time_spent_s")[order]
    del ts, order, parts
    attempts = pd.DataFrame(cols, copy=False)
    return World(
        params=params,
        attempts=attempts,
        goals=goals,
        students=students,
        items=items,
        student_weeks=student_weeks,
        anomalies=anomalies,
    )
