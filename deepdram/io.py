"""Reading and writing design/property tables (CSV or Parquet, chosen by file extension)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from deepdram.errors import InputError

if TYPE_CHECKING:
    import numpy as np
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
    path = Path(path)
    fmt = table_format(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise


def designs_from_table(df: pd.DataFrame, require_valid: bool = True) -> np.ndarray:
    """(B, 42) uint8 designs from the b00..b41 columns of a table, validated (InputError if not)."""
    from deepdram.constants import BIT_COLUMNS
    from deepdram.lattice import from_frame

    if not any(c in df.columns for c in BIT_COLUMNS):
        found = ", ".join(repr(str(c)) for c in list(df.columns)[:5])
        more = f", ... ({len(df.columns)} in all)" if len(df.columns) > 5 else ""
        raise InputError(
            f"missing design columns b00..b41 (42 columns of 0/1); found columns {found}{more}"
        )
    return from_frame(df, require_valid=require_valid)


class atomic_target:
    """Context manager yielding a temporary path next to `path`; renamed onto it only on success."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_json(obj, path: str | os.PathLike) -> None:
    """Write JSON (sorted keys, indented) atomically."""
    import json

    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
