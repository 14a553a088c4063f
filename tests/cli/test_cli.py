"""The `deepdram` command line and table I/O: outputs, help texts, clear errors, no partial files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepdram.cli.main import main
from deepdram.data import tables
from deepdram.errors import InputError
from deepdram.spaces.lattice import fem
from deepdram.spaces.lattice import geometry as lattice
from deepdram.spaces.lattice.constants import BIT_COLUMNS, N_BEAMS
from deepdram.spaces.lattice.space import LatticeSpace

FULL = np.ones(N_BEAMS, dtype=np.uint8)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m deepdram.cli.main ARGS` (the console script's module) in a real subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "deepdram.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def write_designs_csv(path: Path, rows, columns=BIT_COLUMNS) -> Path:
    """A hand-made design CSV (rows of strings or numbers)."""
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_clean_error(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    """Non-zero exit, a one-line message with every needle, no traceback, no output file."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "temporary file left behind"


@pytest.fixture(scope="module")
def sampled(tmp_path_factory) -> Path:
    """20 random Z_g = 3.5 designs written by the CLI."""
    path = tmp_path_factory.mktemp("sample") / "designs.csv"
    assert main(["sample", "--zg", "3.5", "-n", "20", "--seed", "0", "-o", str(path), "-q"]) == 0
    return path


# --- sample -------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_sample_writes_valid_designs(tmp_path, ext):
    out = tmp_path / f"d.{ext}"
    assert main(["sample", "--zg", "3", "-n", "50", "--seed", "7", "-o", str(out), "-q"]) == 0
    df = tables.read_table(out)
    assert list(df.columns) == [*BIT_COLUMNS, "zg"]
    assert len(df) == 50
    d = df[list(BIT_COLUMNS)].to_numpy()
    assert (d.sum(axis=1) == 24).all()  # 8 * Z_g beams
    assert lattice.is_valid(d).all()
    assert len(np.unique(lattice.to_keys(d))) == 50
    assert (df["zg"] == 3.0).all()
    if ext == "parquet":
        assert (df[list(BIT_COLUMNS)].dtypes == np.uint8).all()


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_sample_same_seed_same_bytes(tmp_path, ext):
    a, b, c = (tmp_path / f"{name}.{ext}" for name in "abc")
    for path, seed in ((a, 3), (b, 3), (c, 4)):
        assert main(["sample", "--zg", "4.5", "-n", "30", "--seed", str(seed), "-o", str(path), "-q"]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_sample_subprocess_and_summary(tmp_path):
    out = tmp_path / "sub" / "dir" / "d.csv"  # parent directories are created
    proc = run_cli("sample", "--zg", "2.5", "-n", "10", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 10 designs" in proc.stderr
    df = pd.read_csv(out)
    assert (df[list(BIT_COLUMNS)].sum(axis=1) == 20).all()


# --- simulate: unit cells -----------------------------------------------------------------------


def test_simulate_matches_fem(tmp_path, sampled):
    out = tmp_path / "props.csv"
    assert main(["simulate", str(sampled), "-o", str(out), "-q"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == [*BIT_COLUMNS, "zg", "E11", "E22", "nu12", "nu21"]
    designs = pd.read_csv(sampled)[list(BIT_COLUMNS)].to_numpy()
    expected = fem.cell_properties(designs)
    np.testing.assert_allclose(df[["E11", "E22", "nu12", "nu21"]].to_numpy(), expected, rtol=1e-12, atol=1e-15)


def test_simulate_stress_parquet_and_rerun(tmp_path, sampled):
    out = tmp_path / "props.parquet"
    assert main(["simulate", str(sampled), "-o", str(out), "--stress", "--chunk", "7", "-q"]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns)[-6:] == ["E11", "E22", "nu12", "nu21", "vm1", "vm2"]
    assert (df[["vm1", "vm2"]] > 0).all().all()
    assert (df[list(BIT_COLUMNS)].dtypes == np.uint8).all()
    # Re-simulating an output replaces the old result columns instead of duplicating them.
    again = tmp_path / "again.parquet"
    assert main(["simulate", str(out), "-o", str(again), "-q"]) == 0
    df2 = pd.read_parquet(again)
    assert list(df2.columns) == [*BIT_COLUMNS, "zg", "E11", "E22", "nu12", "nu21"]
    np.testing.assert_allclose(df2[["E11", "nu21"]].to_numpy(), df[["E11", "nu21"]].to_numpy())


def test_simulate_full_design_reference(tmp_path):
    src = write_designs_csv(tmp_path / "full.csv", [FULL])
    out = tmp_path / "p.csv"
    proc = run_cli("simulate", src, "-o", out, "--stress")
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(out).iloc[0]
    assert row["E11"] == pytest.approx(0.25037, rel=1e-4)
    assert row["E22"] == pytest.approx(0.25037, rel=1e-4)
    assert row["nu12"] == pytest.approx(0.18057, rel=1e-4)
    # SPEC section 5: peak von Mises 0.035881 MPa, normalised by E_b * strain = 0.03 MPa.
    assert row["vm1"] == pytest.approx(0.035881 / 0.03, rel=1e-4)


# --- simulate: tilings --------------------------------------------------------------------------


def test_simulate_tiling_flags(tmp_path):
    src = write_designs_csv(tmp_path / "full.csv", [FULL])
    out = tmp_path / "t.csv"
    assert main(["simulate", str(src), "-o", str(out), "--d1", "2", "--d2", "2", "-q"]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == [*BIT_COLUMNS, "d1", "d2", "E11", "E22", "nu12", "nu21"]
    row = df.iloc[0]
    assert (row["d1"], row["d2"]) == (2, 2)
    # SPEC section 5 prints 4 significant digits: agree to half a unit in the last digit.
    assert row["E11"] == pytest.approx(0.2251, abs=5e-5)
    assert row["E22"] == pytest.approx(0.2251, abs=5e-5)
    assert row["nu12"] == pytest.approx(0.2345, abs=5e-5)
    assert row["nu21"] == pytest.approx(0.2345, abs=5e-5)


def test_simulate_tiling_sizes_from_columns(tmp_path, sampled):
    designs = pd.read_csv(sampled).head(4)
    designs["d2"] = [2, 4, 2, 4]
    designs["d1"] = [2, 2, 4, 4]
    src = tmp_path / "sized.parquet"
    tables.write_table(designs, src)
    out = tmp_path / "t.parquet"
    assert main(["simulate", str(src), "-o", str(out), "--stress", "-q"]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == [*BIT_COLUMNS, "zg", "d1", "d2", "E11", "E22", "nu12", "nu21", "vm1", "vm2"]
    assert df["d1"].tolist() == [2, 2, 4, 4] and df["d2"].tolist() == [2, 4, 2, 4]
    assert df[["E11", "E22", "vm1", "vm2"]].gt(0).all().all()
    # Flags override the table's columns.
    out2 = tmp_path / "t2.parquet"
    assert main(["simulate", str(src), "-o", str(out2), "--d1", "2", "--d2", "2", "-q"]) == 0
    df2 = pd.read_parquet(out2)
    assert (df2["d1"] == 2).all() and (df2["d2"] == 2).all()
    np.testing.assert_allclose(df2["E11"].iloc[0], df["E11"].iloc[0], rtol=1e-9)


# --- errors: one clear line, exit status 2, no traceback, no output file -------------------------


def test_error_missing_column(tmp_path):
    src = write_designs_csv(tmp_path / "short.csv", [FULL[:41]], columns=BIT_COLUMNS[:41])
    out = tmp_path / "o.csv"
    proc = run_cli("simulate", src, "-o", out)
    assert proc.returncode == 2
    assert_clean_error(proc, out, "short.csv", "missing", "b41")


def test_error_entry_not_binary(tmp_path):
    rows = [FULL.tolist(), FULL.tolist()]
    rows[1][5] = 2
    src = write_designs_csv(tmp_path / "two.csv", rows)
    out = tmp_path / "o.csv"
    assert_clean_error(run_cli("simulate", src, "-o", out), out, "row 1", "b05", "0 or 1")


def test_error_non_numeric_entry(tmp_path):
    rows = [FULL.tolist()]
    rows[0][41] = "x"
    src = write_designs_csv(tmp_path / "letter.csv", rows)
    out = tmp_path / "o.csv"
    assert_clean_error(run_cli("simulate", src, "-o", out), out, "b41", "0 or 1")


def test_error_disconnected_design(tmp_path):
    bad = np.zeros(N_BEAMS, dtype=int)
    bad[[0, 1, 2, 12]] = 1
    src = write_designs_csv(tmp_path / "dis.csv", [FULL, FULL, bad])
    out = tmp_path / "o.csv"
    assert_clean_error(run_cli("simulate", src, "-o", out), out, "row", "2", "connected")


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--d1", "3", "--d2", "2"], ["d1", "even", "3"]),
        (["--d1", "22", "--d2", "2"], ["d1", "[2, 20]", "22"]),
        (["--d1", "2", "--d2", "0"], ["d2", "even"]),
        (["--d1", "4"], ["--d1 and --d2"]),
    ],
)
def test_error_bad_size(tmp_path, flags, needles):
    src = write_designs_csv(tmp_path / "full.csv", [FULL])
    out = tmp_path / "o.csv"
    proc = run_cli("simulate", src, "-o", out, *flags)
    assert proc.returncode == 2
    assert_clean_error(proc, out, *needles)


def test_error_bad_size_column(tmp_path):
    df = lattice.to_frame(np.stack([FULL, FULL]), d1=[2, 2], d2=[2, 5])
    src = tmp_path / "sized.csv"
    df.to_csv(src, index=False)
    out = tmp_path / "o.csv"
    assert_clean_error(run_cli("simulate", src, "-o", out), out, "d2", "row 1", "5")


@pytest.mark.parametrize(
    "content, needles",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, ["malformed CSV", "binary"]),
        (b"\xff\xfe\xfa garbage\n", ["malformed CSV", "UTF-8"]),
        (None, ["malformed CSV", "Expected 42 fields in line 3, saw 45"]),
        (b"", ["empty"]),
        (",".join(BIT_COLUMNS).encode() + b"\n", ["no data rows"]),
        (b"x;y\n1;2\n", ["missing design columns", "'x;y'"]),
    ],
    ids=["binary", "not-utf8", "ragged", "zero-bytes", "header-only", "no-design-columns"],
)
def test_error_bad_csv(tmp_path, content, needles):
    src = tmp_path / "bad.csv"
    if content is None:
        write_designs_csv(src, [FULL, np.ones(45, dtype=int)])
    else:
        src.write_bytes(content)
    out = tmp_path / "o.csv"
    proc = run_cli("simulate", src, "-o", out)
    assert proc.returncode == 2
    assert_clean_error(proc, out, "bad.csv", *needles)


def test_error_bad_parquet(tmp_path):
    src = tmp_path / "bad.parquet"
    src.write_text("not a parquet file")
    out = tmp_path / "o.csv"
    assert_clean_error(run_cli("simulate", src, "-o", out), out, "bad.parquet", "Parquet")


def test_error_missing_input(tmp_path):
    out = tmp_path / "o.csv"
    assert_clean_error(run_cli("simulate", tmp_path / "nope.csv", "-o", out), out, "nope.csv", "no such file")


@pytest.mark.parametrize("command", ["simulate", "sample"])
def test_error_unknown_output_extension(tmp_path, command):
    src = write_designs_csv(tmp_path / "full.csv", [FULL])
    out = tmp_path / "o.txt"
    args = [src] if command == "simulate" else ["--zg", "3.5", "-n", "3"]
    proc = run_cli(command, *args, "-o", out)
    assert proc.returncode == 2
    assert_clean_error(proc, out, "o.txt", ".txt", ".csv", ".parquet")


def test_error_sample_arguments(tmp_path):
    out = tmp_path / "o.csv"
    assert_clean_error(run_cli("sample", "--zg", "3.3", "-n", "5", "-o", out), out, "3.3", "2.5")
    assert_clean_error(run_cli("sample", "--zg", "3.5", "-n", "0", "-o", out), out, "-n", ">= 1")
    assert_clean_error(run_cli("sample", "--zg", "3.5", "-n", "5", "--seed", "-1", "-o", out), out, "--seed")
    assert_clean_error(run_cli("sample", "-n", "5", "-o", out), out, "--zg")


def test_error_keeps_existing_output(tmp_path):
    """A failed run leaves an existing output file exactly as it was."""
    src = write_designs_csv(tmp_path / "full.csv", [FULL])
    out = tmp_path / "o.csv"
    out.write_text("old contents\n")
    proc = run_cli("simulate", src, "-o", out, "--d1", "3", "--d2", "2")
    assert proc.returncode == 2
    assert out.read_text() == "old contents\n"


# --- table I/O (deepdram.data.tables) ---------------------------------------------------------


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_write_table_atomic_on_failure(tmp_path, monkeypatch, ext):
    out = tmp_path / f"t.{ext}"
    df = pd.DataFrame({"a": [1, 2]})
    method = "to_csv" if ext == "csv" else "to_parquet"
    original = getattr(pd.DataFrame, method)

    def half_then_fail(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)  # the temporary file is fully written ...
        raise RuntimeError("disk full")  # ... and then the write fails

    monkeypatch.setattr(pd.DataFrame, method, half_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        tables.write_table(df, out)
    assert list(tmp_path.iterdir()) == []


def test_write_table_roundtrip(tmp_path):
    df = lattice.to_frame(np.stack([FULL, FULL]), zg=5.25)
    for name in ("a.csv", "b.parquet", "c.pq", "nested/d.CSV"):
        tables.write_table(df, tmp_path / name)
        back = tables.read_table(tmp_path / name)
        assert back.shape == df.shape and (back["zg"] == 5.25).all()
    assert not list(tmp_path.glob(".*"))


def test_designs_from_table_validates():
    df = lattice.to_frame(np.stack([FULL, np.zeros(N_BEAMS, np.uint8)]))
    with pytest.raises(InputError, match="row.* 1"):
        LatticeSpace().designs_of(df)
    assert LatticeSpace().designs_of(df, require_valid=False).shape == (2, N_BEAMS)


# --- help and start-up --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        ([], ["sample", "simulate", "Examples:", "b00..b41", "exit status 2"]),
        (["sample"], ["--zg", "-n", "--seed", "-o", "8 * Z_g", "Examples:", "2.5"]),
        (["simulate"], ["--d1", "--d2", "--stress", "--chunk", "E11", "nu21", "vm1", "E_b", "Examples:"]),
    ],
)
def test_help(args, needles):
    proc = run_cli(*args, "--help")
    assert proc.returncode == 0
    for needle in needles:
        assert needle in proc.stdout, needle


def test_no_command_is_an_error():
    proc = run_cli()
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_import_is_light():
    code = (
        "import sys, deepdram.cli.main\n"
        "heavy = ['numpy', 'pandas', 'numba', 'scipy', 'tensorflow', 'mlflow', 'great_expectations', 'tqdm']\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
