"""Fast bulk writes and reads of DataFrames: ``executemany`` / ``COPY ... FROM STDIN`` to write, ``COPY (query) TO
STDOUT`` / chunked tuples to read numeric frames (:func:`numeric_frame`), and the literal helpers their SQL needs.

Frames use these dtypes: integer ids ``int64``; booleans ``bool``; instants ``datetime64[us, UTC]``; dates
``datetime64`` at midnight or ``datetime.date`` objects; floats ``float64`` with NaN meaning NULL. Columns are
converted according to the target table's column types, so every table can be loaded the same way.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from sqlalchemy import Boolean, Column, Connection, Date, MetaData, Table, text

from learnpulse.store.db import is_sqlite
from learnpulse.store.types import UTCTimestamp

CHUNK_ROWS = 250_000
Progress = Callable[[int], None]


def insert_frame(
    conn: Connection,
    table: Table | str,
    frame: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    target: Table | None = None,
    progress: Progress | None = None,
) -> int:
    """Append ``frame`` to ``table`` (a Table, or the name of a temp table shaped like ``target``).

    Returns the number of rows written. No conflict handling: callers stage and merge when they need it.
    """
    shape = target if target is not None else table
    assert isinstance(shape, Table)
    name = table.name if isinstance(table, Table) else table
    cols = list(columns if columns is not None else frame.columns)
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        if is_sqlite(conn):
            _sqlite_insert(conn, name, shape, chunk, cols)
        else:
            _postgres_copy(conn, name, shape, chunk, cols)
        if progress is not None:
            progress(len(chunk))
    return len(frame)


def _sqlite_column(shape: Table, name: str, values: pd.Series) -> list[Any]:
    coltype = shape.c[name].type
    if isinstance(coltype, UTCTimestamp):
        nulls = values.isna().to_numpy()
        us = values.fillna(pd.Timestamp(0, tz="UTC")).dt.as_unit("us").astype(np.int64)
        return _with_nulls(us.tolist(), nulls)
    if isinstance(coltype, Date):
        return [None if pd.isna(v) else pd.Timestamp(v).date().isoformat() for v in values]
    if isinstance(coltype, Boolean):
        return values.astype(np.int8).tolist()
    if values.dtype.kind == "f" or isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
        # NaN and pd.NA (nullable Int64, ...) both mean NULL.
        return _with_nulls(values.astype(object).tolist(), values.isna().to_numpy())
    return values.tolist()


def _with_nulls(items: list[Any], nulls: np.ndarray) -> list[Any]:
    if nulls.any():
        for i in np.flatnonzero(nulls):
            items[i] = None
    return items


def _sqlite_insert(conn: Connection, name: str, shape: Table, chunk: pd.DataFrame, cols: list[str]) -> None:
    data = [_sqlite_column(shape, c, chunk[c]) for c in cols]
    sql = f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.executemany(sql, zip(*data, strict=True))


def _postgres_copy(conn: Connection, name: str, shape: Table, chunk: pd.DataFrame, cols: list[str]) -> None:
    arrays = []
    for c in cols:
        coltype = shape.c[c].type
        values = chunk[c]
        if isinstance(coltype, Date):
            arrays.append(pa.array(pd.to_datetime(values).dt.date, type=pa.date32()))
        elif isinstance(coltype, UTCTimestamp):
            arrays.append(pa.array(values.astype("datetime64[us, UTC]"), type=pa.timestamp("us", tz="UTC")))
        else:
            arrays.append(pa.array(values, from_pandas=True))
    buf = io.BytesIO()
    pacsv.write_csv(
        pa.table(arrays, names=cols),
        buf,
        write_options=pacsv.WriteOptions(include_header=False, quoting_style="needed"),
    )
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN (FORMAT csv)") as copy:
        copy.write(buf.getbuffer())


def read_frame(conn: Connection, sql: str, params: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run a query and return its rows as a DataFrame (column names from the cursor)."""
    result = conn.execute(text(sql), params or {})
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def day_number_sql(dialect: str, column: str) -> str:
    """SQL for the day number (days since 1970-01-01) of a DATE column."""
    if dialect == "postgresql":
        return f"({column} - DATE '1970-01-01')"
    # julianday('1970-01-01') = 2440587.5 and every 'YYYY-MM-DD' is a whole day after it: the difference is exact.
    return f"CAST(julianday({column}) - 2440587.5 AS INTEGER)"


def users_sql(user_ids: Sequence[int] | None) -> str:
    """`` AND user_id IN (...)`` for a list of ids (integers, so nothing foreign reaches the SQL text); empty for
    None. The ids are written into the statement because PostgreSQL's ``COPY (query)`` takes no parameters."""
    if user_ids is None:
        return ""
    ids = sorted({int(u) for u in user_ids})
    return f" AND user_id IN ({', '.join(str(u) for u in ids)})" if ids else " AND 1 = 0"


def date_literal(dialect: str, value: date) -> str:
    """A DATE literal (built from a ``date``, so nothing foreign reaches the SQL text)."""
    iso = date.fromordinal(value.toordinal()).isoformat()
    return f"DATE '{iso}'" if dialect == "postgresql" else f"'{iso}'"


def numeric_frame(conn: Connection, sql: str, columns: dict[str, Any]) -> pd.DataFrame:
    """Run a query whose columns are all numeric and return them as typed NumPy columns, fast.

    Millions of rows (the daily activity of 50,000 students) make Python row objects the bottleneck, so rows
    travel the cheapest way each driver offers: PostgreSQL ``COPY (query) TO STDOUT`` parsed by Arrow's CSV reader;
    SQLite plain tuples in chunks turned into one NumPy array each. NULL becomes NaN (0 in integer columns).
    """
    raw = conn.connection.driver_connection
    assert raw is not None
    names = list(columns)
    if conn.dialect.name == "postgresql":
        buf = io.BytesIO()
        with raw.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy:
            for data in copy:
                buf.write(data)
        if buf.tell() == 0:
            return pd.DataFrame({n: np.zeros(0, dtype=t) for n, t in columns.items()})
        buf.seek(0)
        table = pacsv.read_csv(
            buf,
            read_options=pacsv.ReadOptions(column_names=names),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.float64())),
        )
        values = {n: table.column(n).to_numpy(zero_copy_only=False) for n in names}
    else:
        cur = raw.cursor()
        try:
            cur.execute(sql)
            chunks = []
            while rows := cur.fetchmany(CHUNK_ROWS):
                chunks.append(np.array(rows, dtype=np.float64).reshape(len(rows), len(names)))
        finally:
            cur.close()
        matrix = np.concatenate(chunks) if chunks else np.zeros((0, len(names)))
        values = {n: matrix[:, i] for i, n in enumerate(names)}
    return pd.DataFrame(
        {
            n: (np.nan_to_num(values[n]).astype(t) if np.issubdtype(t, np.integer) else values[n].astype(t))
            for n, t in columns.items()
        }
    )


def stage_frame(
    conn: Connection,
    name: str,
    *,
    like: Table,
    columns: Sequence[str],
    frame: pd.DataFrame,
    progress: Progress | None,
) -> Table:
    """A temporary, unindexed table with ``like``'s column types, bulk-loaded with ``frame``."""
    cols = ", ".join(columns)
    if is_sqlite(conn):
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{name}")
        conn.exec_driver_sql(f"CREATE TEMP TABLE {name} AS SELECT {cols} FROM {like.name} WHERE 0")
    else:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
        conn.exec_driver_sql(f"CREATE TEMP TABLE {name} ON COMMIT DROP AS SELECT {cols} FROM {like.name} WITH NO DATA")
    stage = Table(name, MetaData(), *(Column(c, like.c[c].type) for c in columns))
    insert_frame(conn, name, frame, columns=list(columns), target=stage, progress=progress)
    if not is_sqlite(conn):
        conn.exec_driver_sql(f"ANALYZE {name}")  # the join below needs row counts to pick a good plan
    return stage


def drop_stage(conn: Connection, stage: Table) -> None:
    conn.exec_driver_sql(f"DROP TABLE {'temp.' if is_sqlite(conn) else 'pg_temp.'}{stage.name}")
