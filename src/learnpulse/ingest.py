"""Validated ingest of attempts and goals files (CSV, gzip-compressed CSV, Parquet).

This module reads and validates; the SQL side (staging and merging) is :mod:`learnpulse.store.loading`.

Every check is vectorised (pyarrow.compute / NumPy): a file is read once as text (CSV) or as typed columns
(Parquet), each column is parsed and checked as a whole, and only the report of problems is built row by row,
capped at :data:`MAX_LISTED` listed problems plus a count per column and reason. An invalid file is rejected
whole with :class:`~learnpulse.errors.InvalidInputError`; nothing of it is loaded.

Row numbers in reports are what a user sees in the file: for CSV the physical line (the header is line 1, the
first data row line 2, blank lines counted); for Parquet the 1-based row index.

Accepted values
    ids (``attempt_id``, ``user_id``, ``item_id``, ``topic_id``): positive integers below 10**18.
    ``is_correct``: true/false, 1/0, t/f, yes/no (any case).
    ``answered_at``: ISO-8601 ``YYYY-MM-DD[T ]HH[:MM[:SS[.fraction]]]`` followed by ``Z`` or an offset
    (``+09:00``, ``+0900``, ``+09``); a timestamp without zone is an error, never guessed. Fractions finer than a
    microsecond are truncated to the microsecond (the database's precision). Instants must lie in
    [1900-01-01, 2200-01-01) UTC. In Parquet a timestamp column must carry a time zone.
    ``time_spent_s`` (optional column): a finite, non-negative number of seconds; empty, NA, N/A, NaN, null or
    None mean "not recorded" (NULL).
    ``target``: a number in [0, 1]. ``deadline``: an ISO date ``YYYY-MM-DD``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import Engine

from learnpulse.errors import ConflictError, InvalidInputError
from learnpulse.store import loading
from learnpulse.store.db import transaction

__all__ = [
    "ATTEMPT_COLUMNS",
    "GOAL_COLUMNS",
    "MAX_LISTED",
    "ColumnSpec",
    "IngestResult",
    "Problem",
    "ValidatedFile",
    "ValidationReport",
    "file_sha256",
    "ingest_attempts",
    "ingest_goals",
    "read_attempts",
    "read_goals",
    "validate_attempts",
    "validate_goals",
]

MAX_LISTED = 100
"""At most this many problems are listed one by one; every problem is counted."""

Kind = Literal["attempts", "goals"]
ColumnKind = Literal["id", "bool", "instant", "seconds", "fraction", "date"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: ColumnKind
    required: bool = True


ATTEMPT_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("attempt_id", "id"),
    ColumnSpec("user_id", "id"),
    ColumnSpec("item_id", "id"),
    ColumnSpec("topic_id", "id"),
    ColumnSpec("is_correct", "bool"),
    ColumnSpec("answered_at", "instant"),
    ColumnSpec("time_spent_s", "seconds", required=False),
)
GOAL_COLUMNS: tuple[ColumnSpec, ...] = (
    ColumnSpec("user_id", "id"),
    ColumnSpec("target", "fraction"),
    ColumnSpec("deadline", "date"),
)
_SPECS: dict[Kind, tuple[tuple[ColumnSpec, ...], str]] = {
    "attempts": (ATTEMPT_COLUMNS, "attempt_id"),
    "goals": (GOAL_COLUMNS, "user_id"),
}

# --- results -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem: ``row`` is the CSV line number or the 1-based Parquet row (None: the whole file/column)."""

    row: int | None
    column: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "reason": self.reason}


@dataclass
class ValidationReport:
    """What validation found. ``errors`` lists at most :data:`MAX_LISTED` problems; ``error_count`` counts all."""

    file: str
    rows: int
    errors: list[Problem] = field(default_factory=list)
    error_count: int = 0
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # "column: reason" -> number of problems
    row_label: str = "line"  # "line" (CSV) or "row" (Parquet)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self, limit: int = 20) -> str:
        """A human-readable report: header line, the first ``limit`` problems, counts, warnings."""
        if self.ok:
            head = f"{self.file}: {self.rows} rows valid"
        else:
            head = (
                f"{self.file}: rejected, {self.error_count} problem{'s' if self.error_count != 1 else ''} "
                f"in {self.rows} data row{'s' if self.rows != 1 else ''}; nothing was loaded"
            )
        lines = [head]
        shown = self.errors[:limit]
        for p in shown:
            where = [f"{self.row_label} {p.row}"] if p.row is not None else []
            where += [f"column {p.column}"] if p.column else []
            lines.append(f"  {', '.join(where) or 'file'}: {p.reason}")
        if self.error_count > len(shown):
            lines.append(f"  ... and {self.error_count - len(shown)} more; problems by column and reason:")
            lines.extend(f"    {key}: {n}" for key, n in self.counts.items())
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_details(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "rows": self.rows,
            "row_label": self.row_label,
            "problems": [p.to_dict() for p in self.errors],
            "error_count": self.error_count,
            "counts": dict(self.counts),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class ValidatedFile:
    """A file that passed validation: its typed frame, the report (warnings) and how to name its rows.

    ``frame.index`` holds each row's 0-based position among the file's data rows (duplicates collapsed), so
    :meth:`row_numbers` can name the rows a later check (e.g. a conflict with stored data) is about.
    """

    path: Path
    kind: Kind
    frame: pd.DataFrame
    report: ValidationReport
    _rows: _RowNumbers

    def row_numbers(self, positions: Sequence[int] | np.ndarray) -> list[int]:
        """User-facing row numbers (CSV line / Parquet row) of 0-based data-row positions."""
        return [int(r) for r in self._rows(np.asarray(positions, dtype=np.int64))]


@dataclass(frozen=True)
class IngestResult:
    file: str
    kind: Kind
    rows_in: int  # data rows in the file
    rows_added: int  # new rows stored
    rows_updated: int  # changed rows (goals only; attempts are never changed)
    batch_id: int | None  # ingest_batch row of this load; None when nothing changed
    already_loaded: bool  # every row was already stored exactly as in the file
    warnings: list[str]
    sha256: str

    def summary(self) -> str:
        if self.already_loaded:
            text = f"{self.file}: {self.rows_in} rows, all already loaded; nothing changed"
        else:
            text = f"{self.file}: {self.rows_in} rows, {self.rows_added} added"
            if self.kind == "goals":
                text += f", {self.rows_updated} updated"
            text += f" (batch {self.batch_id})"
        return "\n".join([text, *(f"  warning: {w}" for w in self.warnings)])


# --- public API ----------------------------------------------------------------------------------------------


def validate_attempts(path: Path | str) -> ValidatedFile:
    """Read and validate an attempts file; raise :class:`InvalidInputError` with the report when invalid."""
    return _validate(Path(path), "attempts")


def validate_goals(path: Path | str) -> ValidatedFile:
    """Read and validate a goals file; raise :class:`InvalidInputError` with the report when invalid."""
    return _validate(Path(path), "goals")


def read_attempts(path: Path | str) -> pd.DataFrame:
    """The validated attempts of a file as a frame with the dtypes of :mod:`learnpulse.store.bulk`.

    Columns: ``attempt_id, user_id, item_id, topic_id`` int64, ``is_correct`` bool, ``answered_at``
    ``datetime64[us, UTC]``, ``time_spent_s`` float64 (NaN: not recorded). Raises :class:`InvalidInputError`.
    """
    return validate_attempts(path).frame


def read_goals(path: Path | str) -> pd.DataFrame:
    """The validated goals of a file: ``user_id`` int64, ``target`` float64, ``deadline`` datetime64[s]."""
    return validate_goals(path).frame


def ingest_attempts(engine: Engine, path: Path | str, progress: Progress | None = None) -> IngestResult:
    """Validate an attempts file, then load what is new in one transaction.

    Raises :class:`InvalidInputError` (invalid file) or :class:`ConflictError` (an ``attempt_id`` already stored
    with different content); in both cases nothing is loaded. ``progress`` is called with row counts as rows
    are written to the database.
    """
    return _ingest(engine, Path(path), "attempts", progress)


def ingest_goals(engine: Engine, path: Path | str, progress: Progress | None = None) -> IngestResult:
    """Validate a goals file, then insert new goals and update changed ones in one transaction."""
    return _ingest(engine, Path(path), "goals", progress)


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _ingest(engine: Engine, path: Path, kind: Kind, progress: Progress | None) -> IngestResult:
    _check_path(path)
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(file_sha256, path)  # hashing overlaps parsing; both release the GIL
        validated = _validate(path, kind)
        sha = digest.result()
    frame, report = validated.frame, validated.report
    source = str(path.resolve())
    with transaction(engine) as conn:
        if kind == "attempts":
            merged = loading.merge_attempts(conn, frame, source=source, sha256=sha, progress=progress)
        else:
            merged = loading.merge_goals(conn, frame, source=source, sha256=sha, progress=progress)
        if merged.conflict_count:
            # Raised inside the transaction: it rolls back, nothing of the file is stored.
            raise _conflict_error(validated, merged.conflicts, merged.conflict_count)
    return IngestResult(
        file=str(path),
        kind=kind,
        rows_in=report.rows,
        rows_added=merged.added,
        rows_updated=merged.updated,
        batch_id=merged.batch_id,
        already_loaded=merged.added == 0 and merged.updated == 0,
        warnings=list(report.warnings),
        sha256=sha,
    )


def _conflict_error(validated: ValidatedFile, conflicts: pd.DataFrame, count: int) -> ConflictError:
    """Name each conflicting row of the file, the columns that differ, and both values."""
    frame = validated.frame
    key = _SPECS[validated.kind][1]
    position_of = pd.Series(frame.index.to_numpy(), index=frame[key].to_numpy())
    problems: list[Problem] = []
    for rec in conflicts.head(MAX_LISTED).to_dict("records"):
        key_value = int(rec[key])
        row = validated.row_numbers([int(position_of[key_value])])[0]
        diffs = [
            f"{col}: file {_show(rec[col])}, stored {_show(rec['stored_' + col])}"
            for col in frame.columns
            if col != key and not _same(rec[col], rec["stored_" + col])
        ]
        problems.append(
            Problem(row, key, f"{key} {key_value} is already stored with different content ({'; '.join(diffs)})")
        )
    report = ValidationReport(
        file=str(validated.path),
        rows=validated.report.rows,
        errors=problems,
        error_count=count,
        warnings=list(validated.report.warnings),
        counts={f"{key}: already stored with different content": count},
        row_label=validated.report.row_label,
    )
    lines = report.summary().splitlines()
    lines[0] = (
        f"{validated.path}: rejected, {count} row{'s' if count != 1 else ''} contradict{'s' if count == 1 else ''} "
        "stored data; nothing was loaded"
    )
    return ConflictError("\n".join(lines), report.to_details())


def _same(a: Any, b: Any) -> bool:
    if _is_missing(a) and _is_missing(b):
        return True
    if _is_missing(a) or _is_missing(b):
        return False
    if isinstance(a, pd.Timestamp) or isinstance(b, pd.Timestamp):
        return bool(pd.Timestamp(a) == pd.Timestamp(b))
    return bool(a == b)


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NaT


# --- reading -------------------------------------------------------------------------------------------------

_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def _file_format(path: Path) -> Literal["csv", "parquet"]:
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    raise InvalidInputError(
        f"{path}: unsupported file type; expected .csv, .csv.gz, .parquet or .pq",
        {"file": str(path), "problems": [Problem(None, None, "unsupported file type").to_dict()], "error_count": 1},
    )


def _check_path(path: Path) -> None:
    _file_format(path)
    if not path.exists():
        reason = "no such file"
    elif not path.is_file():
        reason = "not a regular file"
    else:
        return
    raise InvalidInputError(
        f"{path}: {reason}", {"file": str(path), "problems": [Problem(None, None, reason).to_dict()], "error_count": 1}
    )


def _file_error(path: Path, reason: str, row_label: str = "line") -> InvalidInputError:
    report = ValidationReport(
        file=str(path), rows=0, errors=[Problem(None, None, reason)], error_count=1, row_label=row_label
    )
    return InvalidInputError(f"{path}: rejected, {reason}; nothing was loaded", report.to_details())


def _normalise(name: str) -> str:
    return name.strip().lower()


@dataclass
class _Table:
    """Columns of a file under their normalised names, plus what the header check found."""

    columns: dict[str, Any]  # normalised name -> pa.Array | pa.ChunkedArray
    rows: int
    failures: list[_Failure]
    warnings: list[str]


def _match_header(
    path: Path, raw_names: list[str], specs: tuple[ColumnSpec, ...]
) -> tuple[dict[str, str], list[_Failure], list[str]]:
    """Map wanted normalised names to the file's raw names; problems for missing/duplicate, warnings for extra."""
    wanted = {s.name for s in specs}
    found: dict[str, str] = {}
    failures: list[_Failure] = []
    extra: list[str] = []
    for raw in raw_names:
        name = _normalise(raw)
        if name in found:
            if name in wanted:
                failures.append(_Failure.whole(name, "column appears more than once in the header"))
            continue
        if name in wanted:
            found[name] = raw
        else:
            extra.append(raw)
    for spec in specs:
        if spec.required and spec.name not in found:
            failures.append(_Failure.whole(spec.name, "required column is missing"))
    warnings = [f"ignored extra column{'s' if len(extra) > 1 else ''}: {', '.join(extra)}"] if extra else []
    if failures and len(raw_names) == 1 and any(sep in raw_names[0] for sep in ";\t|"):
        warnings.append("the header has a single column; the file must be comma-separated")
    return found, failures, warnings


def _csv_header(path: Path) -> list[str]:
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 20)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if len(head) == 1 << 20 and exc.start >= len(head) - 4:
            text = head[: exc.start].decode("utf-8-sig")  # a character cut at the end of the block
        else:
            raise _file_error(path, "the header is not UTF-8 text") from exc
    for line in text.splitlines():
        if line.strip():
            return next(csv.reader([line]))
    return []


def _read_csv(path: Path, specs: tuple[ColumnSpec, ...]) -> _Table:
    if path.stat().st_size == 0:
        raise _file_error(path, "the file is empty (0 bytes)")
    try:
        raw_names = _csv_header(path)
    except (OSError, EOFError, pa.ArrowInvalid) as exc:
        raise _file_error(path, f"cannot read the file: {exc}") from exc
    if not raw_names:
        raise _file_error(path, "the file is empty (no header, no data rows)")
    found, failures, warnings = _match_header(path, raw_names, specs)
    bad_rows: list[tuple[int | None, int, int, str]] = []
    n_bad = 0

    def on_invalid_row(row: Any) -> str:
        nonlocal n_bad
        n_bad += 1
        if len(bad_rows) < MAX_LISTED:
            bad_rows.append((row.number, row.expected_columns, row.actual_columns, row.text))
        return "skip"

    def read(use_threads: bool) -> Any:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=use_threads, block_size=8 << 20),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row),
            convert_options=pacsv.ConvertOptions(
                column_types={raw: pa.string() for raw in found.values()},
                include_columns=list(found.values()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    try:
        table = read(use_threads=True)
        if n_bad:
            # Rows with the wrong number of fields: read again in one thread to learn their line numbers.
            bad_rows.clear()
            n_bad = 0
            read(use_threads=False)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "Empty CSV file" in text:
            raise _file_error(path, "the file is empty (no header, no data rows)") from exc
        if "UTF8" in text or "utf8" in text.lower():
            raise _file_error(path, "the file is not UTF-8 text") from exc
        raise _file_error(path, f"cannot parse CSV: {text[:300]}") from exc
    if n_bad:
        lines = _CsvRows(path)
        listed = [
            (lines.line_of_record(num), f"expected {exp} fields, found {act}: {_show(text_)}")
            for num, exp, act, text_ in bad_rows
        ]
        failures.append(_Failure(None, "wrong number of fields", n_bad, listed, rows_known=True))
        return _Table({}, table.num_rows + n_bad, failures, warnings)
    columns = {name: table.column(raw) for name, raw in found.items()}
    return _Table(columns, table.num_rows, failures, warnings)


def _read_parquet(path: Path, specs: tuple[ColumnSpec, ...]) -> _Table:
    if path.stat().st_size == 0:
        raise _file_error(path, "the file is empty (0 bytes)", "row")
    try:
        pf = pq.ParquetFile(path)
        found, failures, warnings = _match_header(path, list(pf.schema_arrow.names), specs)
        table = pf.read(columns=list(found.values()))
    except (pa.ArrowInvalid, OSError) as exc:
        raise _file_error(path, f"not a readable Parquet file: {str(exc)[:300]}", "row") from exc
    columns = {name: table.column(raw) for name, raw in found.items()}
    return _Table(columns, table.num_rows, failures, warnings)


# --- row numbers ---------------------------------------------------------------------------------------------


class _RowNumbers:
    label = "row"

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        return positions + 1


class _CsvRows(_RowNumbers):
    """Physical line numbers of data rows; blank lines (which the reader skips) are counted like a text editor."""

    label = "line"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._nonblank: np.ndarray | None = None

    def nonblank(self) -> np.ndarray:
        """1-based line numbers of the non-blank lines (the header first), computed once, on demand."""
        if self._nonblank is None:
            if self.path.name.lower().endswith(".gz"):
                with gzip.open(self.path, "rb") as fh:
                    data = fh.read()
            else:
                data = self.path.read_bytes()
            buf = np.frombuffer(data, dtype=np.uint8)
            newlines = np.flatnonzero(buf == 10)
            starts = np.concatenate(([0], newlines + 1))
            ends = np.concatenate((newlines, [buf.size]))
            lengths = ends - starts
            has_cr = (lengths > 0) & (buf[np.maximum(ends - 1, 0)] == 13) if buf.size else lengths > 0
            lengths = lengths - has_cr
            self._nonblank = np.flatnonzero(lengths > 0) + 1
        return self._nonblank

    def line_of_record(self, number: int | None) -> int | None:
        """Line of the ``number``-th non-blank line (1-based, header included) as the CSV reader counts them."""
        if number is None:
            return None
        nonblank = self.nonblank()
        return int(nonblank[number - 1]) if 0 < number <= nonblank.size else None

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        nonblank = self.nonblank()
        index = np.minimum(positions + 1, nonblank.size - 1)
        return np.asarray(nonblank[index], dtype=np.int64)


# --- problems ------------------------------------------------------------------------------------------------


@dataclass
class _Failure:
    """All rows failing one check: their number, and the first MAX_LISTED as (0-based position, full reason)."""

    column: str | None
    reason: str
    count: int
    listed: list[tuple[int | None, str]]  # (0-based data-row position or None for the whole column, text)
    rows_known: bool = False  # listed positions are already user-facing row numbers (CSV parse errors)

    @classmethod
    def whole(cls, column: str | None, reason: str) -> _Failure:
        return cls(column, reason, 1, [(None, reason)])

    @classmethod
    def rows(cls, column: str, reason: str, mask: np.ndarray, raw: Any = None) -> _Failure | None:
        """``mask`` marks failing rows; ``raw`` (the column as read) supplies the offending values to show."""
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return None
        first = positions[:MAX_LISTED]
        if raw is None:
            texts = [reason] * first.size
        else:
            values = raw.take(pa.array(first)).to_pylist()
            texts = [f"{reason} (got {_show(v)})" for v in values]
        return cls(column, reason, int(positions.size), [(int(p), t) for p, t in zip(first, texts, strict=True)])


def _show(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "null"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _build_report(
    path: Path,
    *,
    rows: int,
    failures: list[_Failure],
    warnings: list[str],
    numbers: _RowNumbers,
    specs: tuple[ColumnSpec, ...],
) -> ValidationReport:
    """Problems sorted by row (whole-file/column problems first) then column order; the first MAX_LISTED kept."""
    order = {s.name: i for i, s in enumerate(specs)}
    items: list[tuple[int, int, Problem]] = []
    for f in failures:
        positions = [p for p, _ in f.listed if p is not None]
        mapped = iter(positions if f.rows_known else numbers(np.array(positions, dtype=np.int64)).tolist())
        for pos, text in f.listed:
            row = None if pos is None else int(next(mapped))
            items.append((-1 if row is None else row, order.get(f.column or "", -1), Problem(row, f.column, text)))
    items.sort(key=lambda t: (t[0], t[1]))
    counts: dict[str, int] = {}
    for f in failures:
        key = f"{f.column or 'file'}: {f.reason}"
        counts[key] = counts.get(key, 0) + f.count
    return ValidationReport(
        file=str(path),
        rows=rows,
        errors=[p for _, _, p in items[:MAX_LISTED]],
        error_count=sum(f.count for f in failures),
        warnings=warnings,
        counts=counts,
        row_label=numbers.label,
    )


# --- column parsers (vectorised) -----------------------------------------------------------------------------

_ID_RE = r"^0*[1-9][0-9]{0,17}$"  # positive, below 10**18 (well inside int64)
_ID_MAX = 10**18
_TRUE = ("true", "t", "yes", "1")
_FALSE = ("false", "f", "no", "0")
_NULL_TOKENS = ("", "na", "n/a", "nan", "null", "none")
_NUMBER_RE = r"^[+-]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?|(?i:inf|infinity))$"
_INSTANT_RE = (
    r"^(?P<y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})[T ](?P<H>[0-9]{2})"
    r"(?::(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?)?"
    r"(?P<z>Z|[+-](?P<zh>[0-9]{2})(?::?(?P<zm>[0-9]{2}))?)$"
)
_NAIVE_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?)?)?$"
_DATE_RE = r"^(?P<y>[0-9]{4})-(?P<m>[0-9]{2})-(?P<d>[0-9]{2})$"
_INSTANT_MIN_US = 2_208_988_800 * -1_000_000  # 1900-01-01T00:00:00Z
_INSTANT_MAX_US = 7_258_118_400 * 1_000_000  # 2200-01-01T00:00:00Z (exclusive)
_DATE_MIN = np.datetime64("1900-01-01", "D").astype(np.int64)
_DATE_MAX = np.datetime64("2200-01-01", "D").astype(np.int64)

_BOOL_HELP = "not a boolean (use true/false, 1/0, t/f or yes/no)"
_INSTANT_HELP = "not an ISO-8601 timestamp with a zone (e.g. 2026-03-02T21:15:00+09:00 or ...Z)"


@dataclass
class _Parsed:
    """A parsed column: NumPy values (anything at a bad position), the bad rows, and the failures found."""

    values: np.ndarray
    bad: np.ndarray
    failures: list[_Failure]


def _mask(arr: Any) -> np.ndarray:
    """A boolean arrow array (nulls count as False) as a NumPy bool array."""
    return np.asarray(_np(pc.fill_null(arr, False)), dtype=bool)


def _np(arr: Any) -> np.ndarray:
    """An arrow Array or ChunkedArray without nulls as a NumPy array."""
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def _collect(*failures: _Failure | None) -> list[_Failure]:
    return [f for f in failures if f is not None]


def _plain(arr: Any) -> Any:
    if pa.types.is_dictionary(arr.type):
        arr = pc.cast(arr, arr.type.value_type)
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = pc.cast(arr, pa.string())
    return arr


def _type_failure(column: str, arr: Any, expected: str, n: int) -> _Parsed:
    reason = f"column has type {arr.type}, expected {expected}"
    return _Parsed(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool), [_Failure.whole(column, reason)])


def _strings(arr: Any) -> tuple[Any, np.ndarray]:
    """Trimmed text and the rows that are empty or null."""
    text = pc.utf8_trim_whitespace(arr)
    return text, _mask(pc.or_kleene(pc.is_null(text), pc.equal(text, "")))


def _parse_id(column: str, arr: Any) -> _Parsed:
    arr = _plain(arr)
    n = len(arr)
    t = arr.type
    if pa.types.is_string(t):
        text, missing = _strings(arr)
        ok_pa = pc.match_substring_regex(text, _ID_RE)
        ok = _mask(ok_pa)
        values = pc.cast(pc.if_else(ok_pa, text, pa.scalar(None, pa.string())), pa.int64())
        return _Parsed(
            _np(pc.fill_null(values, 0)),
            ~ok,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, "not a positive integer below 10^18", ~ok & ~missing, arr),
            ),
        )
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        missing = _mask(pc.is_null(arr))
        as_float = pa.types.is_floating(t) or pa.types.is_decimal(t)
        if as_float:
            f = _np(pc.fill_null(pc.cast(arr, pa.float64()), 1.0))
            # NaN compares False, so NaN counts as "not a positive integer" here.
            good = np.isfinite(f) & (f >= 1) & (f < 2.0**53) & (np.floor(f) == f)
            ok = good & ~missing
            values = np.where(ok, f, 0).astype(np.int64)
        else:
            if pa.types.is_unsigned_integer(t):
                u = _np(pc.fill_null(arr, 1)).astype(np.uint64)
                in_range = (u >= 1) & (u < _ID_MAX)
                values = np.where(in_range, u, 0).astype(np.int64)
            else:
                values = _np(pc.fill_null(pc.cast(arr, pa.int64()), 1))
                in_range = (values >= 1) & (values < _ID_MAX)
            ok = in_range & ~missing
        return _Parsed(
            values,
            ~ok,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, "not a positive integer below 10^18", ~ok & ~missing, arr),
            ),
        )
    return _type_failure(column, arr, "integers", n)


def _parse_bool(column: str, arr: Any) -> _Parsed:
    arr = _plain(arr)
    t = arr.type
    if pa.types.is_string(t):
        text, missing = _strings(arr)
        lower = pc.utf8_lower(text)
        is_true = _mask(pc.is_in(lower, value_set=pa.array(_TRUE)))
        is_false = _mask(pc.is_in(lower, value_set=pa.array(_FALSE)))
        ok = is_true | is_false
        return _Parsed(
            is_true,
            ~ok,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, _BOOL_HELP, ~ok & ~missing, arr),
            ),
        )
    if pa.types.is_boolean(t):
        missing = _mask(pc.is_null(arr))
        return _Parsed(_mask(arr), missing, _collect(_Failure.rows(column, "missing value", missing)))
    if pa.types.is_integer(t):
        missing = _mask(pc.is_null(arr))
        v = _np(pc.fill_null(pc.cast(arr, pa.int64()), 0))
        ok = ((v == 0) | (v == 1)) & ~missing
        return _Parsed(
            v == 1,
            ~ok,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, _BOOL_HELP, ~ok & ~missing, arr),
            ),
        )
    return _type_failure(column, arr, "booleans", len(arr))


def _int_field(parts: Any, name: str, default: int) -> np.ndarray:
    text = pc.struct_field(parts, name)
    text = pc.if_else(pc.equal(text, ""), str(default), text)
    return np.asarray(_np(pc.fill_null(pc.cast(text, pa.int64()), default)), dtype=np.int64)


def _valid_date_parts(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Real calendar dates, in years a nanosecond timestamp can hold (narrower ranges are checked after parsing)."""
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    days = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(m, 1, 12) - 1] + (leap & (m == 2))
    return np.asarray((y >= 1678) & (y <= 2261) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= days), dtype=bool)


def _timestamp_us(arr: Any) -> np.ndarray:
    """Microseconds since the epoch of a timestamp column (nulls 0); finer units are floored to the microsecond.

    Values too far out to express in microseconds become the int64 minimum, so range checks reject them.
    """
    raw = _np(pc.fill_null(arr.cast(pa.int64()), 0)).astype(np.int64)
    unit = arr.type.unit
    if unit == "ns":
        return np.floor_divide(raw, 1000)
    factor = {"s": 1_000_000, "ms": 1_000, "us": 1}[unit]
    limit = np.iinfo(np.int64).max // factor
    return np.where(np.abs(raw) <= limit, raw * factor, np.iinfo(np.int64).min)


def _parse_instant(column: str, arr: Any) -> _Parsed:
    arr = _plain(arr)
    t = arr.type
    n = len(arr)
    if pa.types.is_string(t):
        text, missing = _strings(arr)
        syntax_pa = pc.match_substring_regex(text, _INSTANT_RE)
        syntax = _mask(syntax_pa)
        candidates = pc.if_else(syntax_pa, text, pa.scalar(None, pa.string()))
        fields_ok = syntax
        try:
            ns = pc.cast(candidates, pa.timestamp("ns", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # Some well-formed strings are impossible instants (month 13, 30 February, hour 24, offset +24:00,
            # year beyond 2200): find them field by field, then parse the rest.
            parts = pc.extract_regex(candidates, _INSTANT_RE)
            y, mo, d = (_int_field(parts, k, 1) for k in ("y", "m", "d"))
            hh, mi, ss = (_int_field(parts, k, 0) for k in ("H", "M", "S"))
            zh, zm = _int_field(parts, "zh", 0), _int_field(parts, "zm", 0)
            fields_ok = (
                syntax & _valid_date_parts(y, mo, d) & (hh <= 23) & (mi <= 59) & (ss <= 59) & (zh <= 23) & (zm <= 59)
            )
            ns = pc.cast(pc.if_else(pa.array(fields_ok), text, pa.scalar(None, pa.string())), pa.timestamp("ns", "UTC"))
        us = np.floor_divide(_np(pc.fill_null(ns.cast(pa.int64()), 0)), 1000)
        in_range = (us >= _INSTANT_MIN_US) & (us < _INSTANT_MAX_US)
        ok = fields_ok & in_range
        naive = _mask(pc.match_substring_regex(text, _NAIVE_RE)) & ~syntax
        return _Parsed(
            us,
            ~ok,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, "timestamp has no time zone or offset; add one (e.g. +09:00 or Z)", naive, arr),
                _Failure.rows(column, _INSTANT_HELP, ~syntax & ~naive & ~missing, arr),
                _Failure.rows(column, "not a valid date and time", syntax & ~fields_ok, arr),
                _Failure.rows(column, "outside 1900-01-01 .. 2200-01-01 UTC", fields_ok & ~in_range, arr),
            ),
        )
    if pa.types.is_timestamp(t):
        if t.tz is None:
            reason = (
                f"timestamps have no time zone (Parquet column type {t}); store them as UTC or with a zone, "
                "a zone is never guessed"
            )
            return _Parsed(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool), [_Failure.whole(column, reason)])
        missing = _mask(pc.is_null(arr))
        us = _timestamp_us(arr)
        in_range = (us >= _INSTANT_MIN_US) & (us < _INSTANT_MAX_US)
        ok = in_range & ~missing
        return _Parsed(
            us,
            ~ok,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, "outside 1900-01-01 .. 2200-01-01 UTC", ~in_range & ~missing, arr),
            ),
        )
    return _type_failure(column, arr, "timestamps with a time zone (or ISO-8601 text)", n)


@dataclass
class _Numbers:
    values: np.ndarray  # float64, NaN where null or not a number
    null: np.ndarray  # empty / null (and, when nullable, NA-like text)
    unusable: np.ndarray  # not a number at all (text that does not parse, or a column of the wrong type)
    failures: list[_Failure]


def _parse_number(column: str, arr: Any, *, nullable: bool) -> _Numbers:
    arr = _plain(arr)
    t = arr.type
    n = len(arr)
    if pa.types.is_string(t):
        text = pc.utf8_trim_whitespace(arr)
        null_tokens = pa.array(_NULL_TOKENS if nullable else ("",))
        null = _mask(pc.or_kleene(pc.is_null(text), pc.is_in(pc.utf8_lower(text), value_set=null_tokens)))
        syntax_pa = pc.match_substring_regex(text, _NUMBER_RE)
        syntax = _mask(syntax_pa)
        parsed = pc.cast(pc.if_else(syntax_pa, text, pa.scalar(None, pa.string())), pa.float64())
        values = np.where(syntax, _np(pc.fill_null(parsed, np.nan)), np.nan)
        unusable = ~syntax & ~null
        failures = _collect(
            None if nullable else _Failure.rows(column, "missing value", null),
            _Failure.rows(column, "not a number", unusable, arr),
        )
        return _Numbers(values, null, unusable, failures)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = np.asarray(_np(pc.fill_null(pc.cast(arr, pa.float64()), np.nan)), dtype=np.float64)
        null = np.isnan(values)
        failures = [] if nullable else _collect(_Failure.rows(column, "missing value", null))
        return _Numbers(values, null, np.zeros(n, dtype=bool), failures)
    everything = np.ones(n, dtype=bool)
    failure = _Failure.whole(column, f"column has type {t}, expected numbers")
    return _Numbers(np.full(n, np.nan), everything, everything, [failure])


def _parse_seconds(column: str, arr: Any) -> _Parsed:
    num = _parse_number(column, arr, nullable=True)
    finite = np.isfinite(num.values)
    nonfinite = ~num.null & ~num.unusable & ~finite
    negative = finite & (num.values < 0)
    failures = num.failures + _collect(
        _Failure.rows(column, "not a finite number", nonfinite, arr),
        _Failure.rows(column, "negative duration", negative, arr),
    )
    bad = num.unusable | nonfinite | negative
    # null stays NaN; -0.0 becomes 0.0
    return _Parsed(np.where(bad, np.nan, num.values + 0.0), bad, failures)


def _parse_fraction(column: str, arr: Any) -> _Parsed:
    num = _parse_number(column, arr, nullable=False)
    usable = ~num.null & ~num.unusable
    outside = usable & ~((num.values >= 0) & (num.values <= 1))
    failures = num.failures + _collect(_Failure.rows(column, "not in [0, 1]", outside, arr))
    return _Parsed(num.values + 0.0, ~usable | outside, failures)


def _parse_date(column: str, arr: Any) -> _Parsed:
    arr = _plain(arr)
    t = arr.type
    n = len(arr)
    if pa.types.is_string(t):
        text, missing = _strings(arr)
        syntax_pa = pc.match_substring_regex(text, _DATE_RE)
        syntax = _mask(syntax_pa)
        parts = pc.extract_regex(pc.if_else(syntax_pa, text, pa.scalar(None, pa.string())), _DATE_RE)
        y, mo, d = (_int_field(parts, k, 1) for k in ("y", "m", "d"))
        ok = syntax & _valid_date_parts(y, mo, d)
        days = pc.cast(pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string())), pa.date32())
        values = _np(pc.fill_null(days.cast(pa.int32()), 0)).astype(np.int64)
        in_range = (values >= _DATE_MIN) & (values < _DATE_MAX)
        good = ok & in_range
        return _Parsed(
            values,
            ~good,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, "not an ISO date YYYY-MM-DD", ~syntax & ~missing, arr),
                _Failure.rows(column, "not a valid date", syntax & ~ok, arr),
                _Failure.rows(column, "outside 1900-01-01 .. 2199-12-31", ok & ~in_range, arr),
            ),
        )
    if pa.types.is_date(t) or (pa.types.is_timestamp(t) and t.tz is None):
        missing = _mask(pc.is_null(arr))
        if pa.types.is_timestamp(t):
            us = _timestamp_us(arr)
            day_us = 86_400_000_000
            values = np.floor_divide(us, day_us)
            midnight = (us % day_us) == 0
        else:
            values = _np(pc.fill_null(pc.cast(arr, pa.date32()), 0).cast(pa.int32())).astype(np.int64)
            midnight = np.ones(n, dtype=bool)
        in_range = (values >= _DATE_MIN) & (values < _DATE_MAX)
        ok = ~missing & midnight & in_range
        return _Parsed(
            values,
            ~ok,
            _collect(
                _Failure.rows(column, "missing value", missing),
                _Failure.rows(column, "not a date (has a time of day)", ~missing & ~midnight, arr),
                _Failure.rows(column, "outside 1900-01-01 .. 2199-12-31", ~missing & midnight & ~in_range, arr),
            ),
        )
    return _type_failure(column, arr, "dates (or ISO text YYYY-MM-DD)", n)


_PARSERS: dict[ColumnKind, Callable[[str, Any], _Parsed]] = {
    "id": _parse_id,
    "bool": _parse_bool,
    "instant": _parse_instant,
    "seconds": _parse_seconds,
    "fraction": _parse_fraction,
    "date": _parse_date,
}


def _to_series(kind: ColumnKind, values: np.ndarray) -> Any:
    if kind == "id":
        return values.astype(np.int64, copy=False)
    if kind == "bool":
        return values.astype(bool, copy=False)
    if kind == "instant":
        return pd.Series(values.astype(np.int64).view("datetime64[us]")).dt.tz_localize("UTC").array
    if kind == "date":
        return values.astype("datetime64[D]").astype("datetime64[s]")
    return values.astype(np.float64, copy=False)


# --- duplicates ----------------------------------------------------------------------------------------------


def _duplicates(
    key: str, values: dict[str, np.ndarray], usable: np.ndarray, numbers: _RowNumbers
) -> tuple[np.ndarray, list[_Failure], list[str]]:
    """Rows to drop (identical repeats of a key), failures for repeats with different content, warnings."""
    n = usable.size
    drop = np.zeros(n, dtype=bool)
    positions = np.flatnonzero(usable)
    ids = values[key][positions]
    if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])):
        return drop, [], []
    repeated = pd.Series(ids).duplicated(keep=False).to_numpy()
    if not repeated.any():
        return drop, [], []
    pos = positions[repeated]
    order = np.lexsort((pos, values[key][pos]))
    pos = pos[order]
    sorted_ids = values[key][pos]
    starts = np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1]))
    group_first = np.maximum.accumulate(np.where(starts, np.arange(pos.size), 0))
    later = pos[~starts]
    first = pos[group_first[~starts]]
    differs: dict[str, np.ndarray] = {}
    for name, col in values.items():
        if name == key:
            continue
        a, b = col[later], col[first]
        same = a == b
        if col.dtype.kind == "f":
            same |= np.isnan(a) & np.isnan(b)
        differs[name] = ~same
    different = np.zeros(later.size, dtype=bool)
    for d in differs.values():
        different |= d
    identical = later[~different]
    drop[identical] = True
    warnings = []
    if identical.size:
        warnings.append(
            f"{identical.size} repeated row{'s' if identical.size > 1 else ''} with the same {key} and the same "
            "content collapsed into one"
        )
    bad_later, bad_first = later[different], first[different]
    if bad_later.size == 0:
        return drop, [], warnings
    shown = min(MAX_LISTED, bad_later.size)
    first_rows = numbers(bad_first[:shown])
    texts = []
    for i in range(shown):
        cols = [name for name, d in differs.items() if d[np.flatnonzero(different)[i]]]
        texts.append(
            f"{key} {int(values[key][bad_later[i]])} also on {numbers.label} {int(first_rows[i])} "
            f"with different {', '.join(cols)}"
        )
    failure = _Failure(
        key,
        "repeated with different content",
        int(bad_later.size),
        [(int(p), t) for p, t in zip(bad_later[:shown], texts, strict=True)],
    )
    return drop, [failure], warnings


# --- validation ----------------------------------------------------------------------------------------------


def _validate(path: Path, kind: Kind) -> ValidatedFile:
    specs, key = _SPECS[kind]
    fmt = _file_format(path)
    _check_path(path)
    table = _read_csv(path, specs) if fmt == "csv" else _read_parquet(path, specs)
    numbers: _RowNumbers = _CsvRows(path) if fmt == "csv" else _RowNumbers()
    failures = list(table.failures)
    n = table.rows
    if n == 0:
        empty = "no data rows (only a header)" if fmt == "csv" else "no data rows"
        if not failures:
            raise _file_error(path, empty, numbers.label)
        failures.append(_Failure.whole(None, empty))
    parsed: dict[str, np.ndarray] = {}
    bad = np.zeros(n, dtype=bool)
    for spec in specs:
        arr = table.columns.get(spec.name)
        if arr is None:
            if spec.required:
                continue
            parsed[spec.name] = np.full(n, np.nan)  # optional column absent: nothing recorded
            continue
        result = _PARSERS[spec.kind](spec.name, arr)
        parsed[spec.name] = result.values
        bad |= result.bad
        failures.extend(result.failures)
    drop = np.zeros(n, dtype=bool)
    warnings = list(table.warnings)
    if len(parsed) == len(specs):
        # Repeated keys are compared among the rows that are valid in themselves.
        drop, dup_failures, dup_warnings = _duplicates(key, parsed, ~bad, numbers)
        failures.extend(dup_failures)
        warnings.extend(dup_warnings)
    report = _build_report(path, rows=n, failures=failures, warnings=warnings, numbers=numbers, specs=specs)
    if not report.ok:
        raise InvalidInputError(report.summary(), report.to_details())
    keep = ~drop
    positions = np.flatnonzero(keep) if drop.any() else np.arange(n)
    frame = pd.DataFrame(
        {s.name: _to_series(s.kind, parsed[s.name][keep] if drop.any() else parsed[s.name]) for s in specs},
        index=pd.Index(positions, dtype=np.int64),
    )
    return ValidatedFile(path=path, kind=kind, frame=frame, report=report, _rows=numbers)
