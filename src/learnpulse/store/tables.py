"""SQLAlchemy table definitions: the data model of DESIGN.md.

Names from the original system are kept (``attempt``, ``features_topic_daily``, ``weekly_kpi``, ...). Model
columns are spelled in lower case in SQL (kinder to PostgreSQL): ``I_t`` -> ``i_t``, ``P`` -> ``p``,
``sigma`` (σ) -> ``sigma``, ``S`` -> ``s``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from learnpulse.store.types import UTCTimestamp

# On SQLite only INTEGER PRIMARY KEY aliases the rowid, which keeps bulk loads fast and tables small.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# --- source data ---------------------------------------------------------------------------------------------

ingest_batch = Table(
    "ingest_batch",
    metadata,
    Column("batch_id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # attempts | goals | generate
    Column("source", Text, nullable=False),  # file path or "generate --seed ..."
    Column("sha256", String(64), nullable=True),
    Column("rows_in", BigInteger, nullable=False),
    Column("rows_added", BigInteger, nullable=False),
    Column("loaded_at", UTCTimestamp, nullable=False),
)

attempt = Table(
    "attempt",
    metadata,
    Column("attempt_id", BigId, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, nullable=False),
    Column("item_id", BigInteger, nullable=False),
    Column("topic_id", BigInteger, nullable=False),
    Column("is_correct", Boolean, nullable=False),
    Column("answered_at", UTCTimestamp, nullable=False),
    Column("time_spent_s", Float, nullable=True),
    # Which load brought the row: build-kpi recomputes only what batches newer than its watermark touch.
    Column("batch_id", Integer, nullable=False),
    Index(None, "user_id", "answered_at"),
    Index(None, "batch_id"),
)

user_goal = Table(
    "user_goal",
    metadata,
    Column("user_id", BigId, primary_key=True, autoincrement=False),
    Column("target", Float, CheckConstraint("target >= 0 AND target <= 1", name="target_range"), nullable=False),
    Column("deadline", Date, nullable=False),
    Column("batch_id", Integer, nullable=False),
)

# --- derived by build-kpi ------------------------------------------------------------------------------------

features_topic_daily = Table(
    "features_topic_daily",
    metadata,
    # Key order (user, day, topic): incremental builds read and rewrite day ranges of single students.
    Column("user_id", BigInteger, primary_key=True),
    Column("day", Date, primary_key=True),  # local calendar day in LEARNPULSE_TIMEZONE
    Column("topic_id", BigInteger, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("correct", Integer, nullable=False),
    Column("accuracy", Float, nullable=False),  # correct / attempts
    Column("time_spent_s", Float, nullable=False),  # sum over attempts with a recorded time
    Column("timed_attempts", Integer, nullable=False),  # attempts with a recorded time
    # On SQLite, cluster rows by the key: the build inserts them in key order, so one B-tree is appended to.
    sqlite_with_rowid=False,
)

weekly_kpi = Table(
    "weekly_kpi",
    metadata,
    Column("user_id", BigInteger, primary_key=True),
    Column("week_start", Date, primary_key=True),  # local Monday
    # activity columns (build-kpi)
    Column("attempts", Integer, nullable=False),
    Column("correct", Integer, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("active_days", Integer, nullable=False),
    Column("study_minutes", Float, nullable=False),
    Column("topics", Integer, nullable=False),  # distinct topics practised
    # model columns (each written by its own job, never by build-kpi except the I_t placeholder)
    Column("i_t", Float, nullable=True),  # I_t, learning index 0-100
    Column("i_t_source", String(16), nullable=True),  # "accuracy" (placeholder) or "irt"
    Column("i_t_sd", Float, nullable=True),  # posterior SD of I_t (calibrate-irt's EAP SD x 10; NULL: placeholder)
    # forecast-prophet, on the student's last observed week: next week's I_t forecast and its interval
    Column("i_t_next", Float, nullable=True),
    Column("i_t_next_lower", Float, nullable=True),
    Column("i_t_next_upper", Float, nullable=True),
    Column("anomaly", Boolean, nullable=True),  # forecast-prophet: this week's I_t is anomalous (NULL: not judged)
    Column("p", Float, nullable=True),  # P, goal-attainment probability
    Column("sigma", Float, nullable=True),  # sigma, posterior SD of expected accuracy at the deadline
    Column("s", Float, nullable=True),  # S, churn risk
    Column("kpi_run_id", Integer, nullable=True),  # job_run that last wrote the activity columns
)

# --- model results (each row carries the run_id of the job_run that wrote it) --------------------------------

survival_fit_meta = Table(
    "survival_fit_meta",
    metadata,
    # One fitted churn model (fit-survival-churn) per as-of date; a re-run for the same as-of replaces it.
    Column("run_id", Integer, primary_key=True, autoincrement=False),
    Column("as_of", Date, nullable=False, unique=True),
    Column("lookback_days", Integer, nullable=False),  # SURVIVAL_LOOKBACK_DAYS
    Column("threshold_days", Integer, nullable=False),  # SURVIVAL_EVENT_THRESHOLD_DAYS = the horizon of S
    Column("landmarks", JSON, nullable=False),  # landmark dates with their rows and events
    Column("formula", Text, nullable=False),
    Column("covariates", JSON, nullable=False),  # name, unit, description (and those dropped, with why)
    Column("coefficients", JSON, nullable=False),  # per component and feature: coef, se, ratio + interval
    Column("n_rows", Integer, nullable=False),  # training landmark rows
    Column("n_students", Integer, nullable=False),  # training students
    Column("n_events", Integer, nullable=False),  # training events
    Column("heldout", JSON, nullable=False),  # held-out students: rows, events, concordance
    Column("concordance_train", Float, nullable=True),
    Column("concordance_heldout", Float, nullable=True),  # Harrell's C of S on held-out students' rows
    Column("calibration", JSON, nullable=False),  # predicted vs observed churn by decile (held-out)
    Column("baseline", JSON, nullable=False),  # times and cumulative hazard at the training means
    Column("standardization", JSON, nullable=False),  # training means and SDs of the covariates
    Column("log_likelihood", Float, nullable=False),
    Column("model", JSON, nullable=False),  # churn.ChurnModel.to_json() (first-day logit + Cox): what predict loads
)

survival_score = Table(
    "survival_score",
    metadata,
    # Churn risk of every student at risk on the as-of date (fit-survival-churn).
    Column("as_of", Date, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("run_id", Integer, nullable=False),
    Column("s", Float, nullable=False),  # S: P(churn gap starts within threshold_days | active so far)
    Column("linear_predictor", Float, nullable=False),  # log hazard ratio against the training means
    Column("days_since_last_attempt", Integer, nullable=False),
    Column("top_factors", JSON, nullable=False),  # covariates that raise the hazard most (why S is high)
)

inactivity_alert = Table(
    "inactivity_alert",
    metadata,
    # One row per flagged student per day (detect-inactivity); a re-run for the same day replaces the day's rows.
    Column("alert_date", Date, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("run_id", Integer, nullable=False),
    Column("last_active_day", Date, nullable=False),
    Column("days_inactive", Integer, nullable=False),
    Column("s", Float, nullable=True),  # latest S on or before alert_date (NULL: not scored)
    Column("s_as_of", Date, nullable=True),  # the as-of date of that S
    Column("tier", String(16), nullable=False),  # high | medium | low | churned | unscored
    Column("reasons", JSON, nullable=False),  # why the student is flagged
    Column("top_factors", JSON, nullable=True),  # from survival_score, when scored
)

growth_brms_meta = Table(
    "growth_brms_meta",
    metadata,
    # One row per fit-bayesian-growth run, failed ones included (with their diagnostics); the latest succeeded
    # row is the model in use.
    Column("run_id", Integer, primary_key=True, autoincrement=False),
    Column("as_of", Date, nullable=False),
    Column("status", String(16), nullable=False),  # succeeded | failed
    Column("reason", Text, nullable=True),  # why a failed run failed
    Column("formula", Text, nullable=False),
    Column("family", String(16), nullable=False),  # BRMS_FAMILY
    Column("sampler", String(16), nullable=False, server_default="nuts"),  # BRMS_SAMPLER
    Column("iter", Integer, nullable=False),  # BRMS_ITER (per chain, warm-up included)
    Column("chains", Integer, nullable=False),  # BRMS_CHAINS
    Column("lookback_weeks", Integer, nullable=False),  # LOOKBACK_WEEKS
    Column("window_start", Date, nullable=False),  # Monday of time = 0 (week index 0 of the window)
    Column("priors", JSON, nullable=False),
    Column("n_units", Integer, nullable=False),  # students in the fit
    Column("n_obs", Integer, nullable=False),  # student-weeks in the fit
    Column("fixed_effects", JSON, nullable=True),  # Intercept, time: estimate, error, 95% interval, R-hat, ESS
    Column("random_effects", JSON, nullable=True),  # sd(Intercept), sd(time), cor(Intercept,time): the same
    Column("residual_sigma", JSON, nullable=True),  # gaussian family's sigma: the same (NULL for binomial)
    Column("diagnostics", JSON, nullable=True),  # max R-hat, min bulk/tail ESS, divergences, draws
    Column("elapsed_seconds", Float, nullable=False),
    Column("model", JSON, nullable=True),  # GrowthModel.to_json(include_units=False): population part of predict
    Index(None, "status", "as_of"),
)

growth_unit = Table(
    "growth_unit",
    metadata,
    # Per student of a succeeded fit: the posterior moments predict needs, and P / sigma for the student's goal.
    Column("run_id", Integer, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("n_obs", Integer, nullable=False),  # weeks with attempts in the window (0: population prediction)
    Column("m0", Float, nullable=False),  # posterior mean of the student's intercept (link scale, time 0)
    Column("m1", Float, nullable=False),  # posterior mean of the student's slope (link scale, per week)
    Column("v00", Float, nullable=False),  # posterior covariance of (intercept, slope)
    Column("v01", Float, nullable=False),
    Column("v11", Float, nullable=False),
    Column("target", Float, nullable=True),  # user_goal.target (NULL: no goal)
    Column("deadline", Date, nullable=True),
    Column("p", Float, nullable=True),  # P: posterior probability that expected accuracy at deadline >= target
    Column("sigma", Float, nullable=True),  # posterior SD of the expected accuracy at the deadline
    Column("expected", Float, nullable=True),  # posterior mean of the expected accuracy at the deadline
    Column("flag", String(24), nullable=False),  # ok | little_history | no_history | no_goal | deadline_passed
)

irt_calibration_meta = Table(
    "irt_calibration_meta",
    metadata,
    # One 2PL calibration (calibrate-irt) per run; the latest is the scale I_t is on.
    Column("run_id", Integer, primary_key=True, autoincrement=False),
    Column("as_of", Date, nullable=False),
    Column("window_start", Date, nullable=False),  # Monday of the first week calibrated
    Column("window_end", Date, nullable=False),  # Sunday of the last week calibrated
    Column("n_responses", BigInteger, nullable=False),
    Column("n_persons", Integer, nullable=False),  # student-weeks (each is one person of the calibration)
    Column("n_items", Integer, nullable=False),  # items calibrated
    Column("n_flagged", Integer, nullable=False),  # items left out (too few responses, no variance)
    Column("linking", JSON, nullable=False),  # method, base run, A, B, anchors, drift summary (or "base scale")
    Column("log_likelihood", Float, nullable=False),
    Column("iterations", Integer, nullable=False),
    Column("converged", Boolean, nullable=False),
    Column("settings", JSON, nullable=False),  # engine parameters
    Column("elapsed_seconds", Float, nullable=False),
    Column("model", JSON, nullable=False),  # IRT2PL.to_json() on the linked scale: what /irt/score loads
)

irt_item = Table(
    "irt_item",
    metadata,
    # Item parameters of every calibration, on the linked scale (NULL a/b: flagged, left out).
    Column("run_id", Integer, primary_key=True),
    Column("item_id", BigInteger, primary_key=True),
    Column("a", Float, nullable=True),
    Column("b", Float, nullable=True),
    Column("se_a", Float, nullable=True),
    Column("se_b", Float, nullable=True),
    Column("n_responses", Integer, nullable=False),
    Column("p_correct", Float, nullable=False),
    Column("flag", String(24), nullable=True),  # too_few_responses | no_variance | NULL
    Index(None, "item_id", "run_id"),
)

prophet_fit_meta = Table(
    "prophet_fit_meta",
    metadata,
    # One row per student and forecast-prophet run: the fitted trend and the forecast (or why there is none).
    Column("run_id", Integer, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("as_of", Date, nullable=False),
    Column("status", String(16), nullable=False),  # fitted | skipped | failed
    Column("reason", Text, nullable=True),  # why skipped or failed
    Column("n_points", Integer, nullable=False),  # weeks of I_t in the series
    Column("engine", String(16), nullable=False),  # batch (vectorised MAP of prophet's model) | prophet
    Column("parameters", JSON, nullable=True),  # k, m, delta, sigma_obs, scaling, log-posterior
    Column("changepoints", JSON, nullable=True),  # changepoint dates
    Column("forecast", JSON, nullable=True),  # [{week_start, yhat, yhat_lower, yhat_upper}] for the next weeks
    Index(None, "as_of"),
)

prophet_anomalies = Table(
    "prophet_anomalies",
    metadata,
    # Weeks whose I_t broke the student's pattern (forecast-prophet).
    Column("run_id", Integer, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("week_start", Date, primary_key=True),
    Column("y", Float, nullable=False),  # observed I_t
    # the I_t the rule judged: the week's own answers' estimate (yhat + residual); y when judged without answers,
    # NULL in rows written before this column existed
    Column("evidence", Float, nullable=True),
    Column("yhat", Float, nullable=False),  # expected I_t
    Column("lower", Float, nullable=False),  # expected range
    Column("upper", Float, nullable=False),
    Column("score", Float, nullable=False),  # |evidence - yhat| / residual scale
    Column("direction", String(8), nullable=False),  # drop | jump
    Index(None, "week_start", "direction"),
)

segment_meta = Table(
    "segment_meta",
    metadata,
    # One row per segment of a cluster-segments run (vanished segments of the previous run included, size 0).
    Column("run_id", Integer, primary_key=True),
    Column("segment_id", Integer, primary_key=True),  # stable across runs for a persisting segment
    Column("as_of", Date, nullable=False),
    Column("name", String(64), nullable=False),  # readable, unique within the run
    Column("size", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # persisting | new | vanished
    Column("matched_previous_id", Integer, nullable=True),  # the previous run's id it was matched to
    Column("match_distance", Float, nullable=True),
    Column("centroid", JSON, nullable=True),  # feature -> value in original units
    Column("quality", JSON, nullable=False),  # method, k, how k was chosen, silhouette / BIC, inertia
)

user_segment = Table(
    "user_segment",
    metadata,
    # Each student's segment in a cluster-segments run.
    Column("run_id", Integer, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("segment_id", Integer, nullable=False),
    Column("distance", Float, nullable=False),  # to the segment's centre in the scaled feature space
    Column("probability", Float, nullable=True),  # membership probability (gmm only)
    Index(None, "user_id", "run_id"),
)

# --- operations ----------------------------------------------------------------------------------------------

job_run = Table(
    "job_run",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(64), nullable=False),
    Column("parameters", JSON, nullable=False),
    Column("as_of", Date, nullable=True),
    Column("started_at", UTCTimestamp, nullable=False),
    Column("finished_at", UTCTimestamp, nullable=True),
    Column("status", String(16), nullable=False),  # running | succeeded | failed
    Column("rows_written", BigInteger, nullable=True),
    Column("error", Text, nullable=True),
    Index(None, "job", "started_at"),
)

job_state = Table(
    "job_state",
    metadata,
    Column("job", String(64), primary_key=True),
    Column("state", JSON, nullable=False),
    Column("updated_at", UTCTimestamp, nullable=False),
)

# --- the synthetic world's truth (written by `learnpulse generate`) ------------------------------------------

sim_world = Table(
    "sim_world",
    metadata,
    Column("world_id", Integer, primary_key=True, autoincrement=False),  # always 1: one world per database
    Column("seed", BigInteger, nullable=False),
    Column("students", Integer, nullable=False),
    Column("weeks", Integer, nullable=False),
    Column("start_date", Date, nullable=False),  # first local day (a Monday)
    Column("parameters", JSON, nullable=False),  # every generator parameter, incl. true effects
    Column("created_at", UTCTimestamp, nullable=False),
)

sim_student = Table(
    "sim_student",
    metadata,
    Column("user_id", BigId, primary_key=True, autoincrement=False),
    Column("learner_type", Integer, nullable=False),
    Column("learner_type_name", String(64), nullable=False),
    Column("theta0", Float, nullable=False),  # ability at the start, logit scale
    Column("growth", Float, nullable=False),  # ability gain per week
    Column("engagement", Float, nullable=False),  # probability of being active on a given day
    Column("attempts_per_day", Float, nullable=False),  # mean attempts on an active day
    Column("regularity", Float, nullable=False),  # 0-1, 1 = equally active every week (a churn covariate)
    Column("topics", Integer, nullable=False),  # number of topics the student studies
    Column("enrol_day", Integer, nullable=False),  # days after start_date
    Column("churn_day", Integer, nullable=True),  # day the churn gap starts (None: not within the world)
    Column("hazard_lp", Float, nullable=False),  # true linear predictor of the churn hazard
    Column("goal_target", Float, nullable=False),
    Column("goal_deadline", Date, nullable=False),
    Column("accuracy_at_deadline", Float, nullable=False),  # true expected accuracy at the deadline
    Column("goal_reached", Boolean, nullable=False),
)

sim_item = Table(
    "sim_item",
    metadata,
    Column("item_id", BigId, primary_key=True, autoincrement=False),
    Column("topic_id", BigInteger, nullable=False),
    Column("a", Float, nullable=False),  # 2PL discrimination
    Column("b", Float, nullable=False),  # 2PL difficulty
)

sim_student_week = Table(
    "sim_student_week",
    metadata,
    Column("user_id", BigInteger, primary_key=True),
    Column("week_start", Date, primary_key=True),
    Column("theta", Float, nullable=False),  # true ability that week, anomaly included
    Column("expected_accuracy", Float, nullable=False),  # mean P(correct) over the item bank
)

sim_anomaly = Table(
    "sim_anomaly",
    metadata,
    Column("user_id", BigInteger, primary_key=True),
    Column("week_start", Date, primary_key=True),
    Column("kind", String(16), nullable=False),  # "drop"
    Column("effect", Float, nullable=False),  # shift of ability that week, logits
)

SIM_TABLES = (sim_world, sim_student, sim_item, sim_student_week, sim_anomaly)
DERIVED_TABLES = (features_topic_daily, weekly_kpi)
SURVIVAL_TABLES = (survival_fit_meta, survival_score, inactivity_alert)
GROWTH_TABLES = (growth_brms_meta, growth_unit)
# Every model result table: derived from the source data, replaced with it.
IRT_TABLES = (irt_calibration_meta, irt_item)
FORECAST_TABLES = (prophet_fit_meta, prophet_anomalies)
SEGMENT_TABLES = (segment_meta, user_segment)
MODEL_TABLES = (*SURVIVAL_TABLES, *GROWTH_TABLES, *IRT_TABLES, *FORECAST_TABLES, *SEGMENT_TABLES)
