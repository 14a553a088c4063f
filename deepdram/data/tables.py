"""Reading and writing tables (CSV or Parquet, chosen by file extension), with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from deepdram.data.atomic import atomic_target
from deepdram.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: str | os.PathLike) -> str:
    """'csv' or 'parquet' from the file extension of `path`, else InputError."""
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        raise InputError(
            f"{path}: unknown table format {suffix or '(no extension)'!r}; "
            "use .csv, .parquet or .pq"
        ) from None


def _looks_binary(path: Path) -> bool:
    """True if the first 8 KiB of the file hold a NUL byte (not a text CSV)."""
    with open(path, "rb") as fh:
        return b"\x00" in fh.read(8192)


def _read_csv(path: Path) -> pd.DataFrame:
    """Parse a CSV file, turning pandas' parser failures into InputError."""
    import pandas as pd

    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (expected a header line and data rows)")
    if _looks_binary(path):
        raise InputError(f"{path}: malformed CSV: the file holds binary data, not comma-separated text")
    try:
        return pd.read_csv(path, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty (expected a header line and data rows)") from None
    except pd.errors.ParserError as exc:
        detail = " ".join(str(exc).split()).replace("Error tokenizing data. C error: ", "")
        raise InputError(f"{path}: malformed CSV: {detail}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: malformed CSV: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise InputError(f"{path}: malformed CSV: {exc}") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    """Read a Parquet file, turning reader failures into InputError."""
    import pandas as pd

    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty (not a Parquet file)")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises a variety of ArrowInvalid / OSError types
        detail = " ".join(str(exc).split())
        raise InputError(f"{path}: cannot read Parquet file: {detail}") from None


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or Parquet table (by extension); InputError for missing, empty or malformed files."""
    path = Path(path)
    fmt = table_format(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a table file")
    try:
        df = _read_csv(path) if fmt == "csv" else _read_parquet(path)
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if len(df) == 0:
        raise InputError(f"{path}: the table has no data rows")
    return df


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a table as CSV or Parquet (by extension), atomically: all of it or nothing."""
    fmt = table_format(path)
    with atomic_target(path) as tmp:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
