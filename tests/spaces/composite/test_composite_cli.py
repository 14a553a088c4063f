"""`deepdram sample --space composite --soft-fraction F` and `deepdram simulate --space composite`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepdram.cli.main import main
from deepdram.spaces.composite.fem import toughness
from deepdram.spaces.composite.space import DESIGN_COLUMNS


def test_sample_then_simulate_adds_toughness(tmp_path, capsys):
    d, t = tmp_path / "d.csv", tmp_path / "t.csv"
    assert main(["sample", "--space", "composite", "--soft-fraction", "0.25", "-n", "200", "--seed", "0",
                 "-o", str(d)]) == 0
    assert "wrote 200 designs (8 of 32 cells soft)" in capsys.readouterr().err
    df = pd.read_csv(d)
    assert list(df.columns) == [*DESIGN_COLUMNS, "soft_count"]
    cells = df[list(DESIGN_COLUMNS)].to_numpy()
    assert ((cells == 0).sum(axis=1) == 8).all() and (df["soft_count"] == 8).all()
    assert len(np.unique(cells, axis=0)) == 200
    again = tmp_path / "again.csv"
    assert main(["sample", "--space", "composite", "--soft-fraction", "0.25", "-n", "200", "--seed", "0",
                 "-o", str(again), "-q"]) == 0
    assert again.read_bytes() == d.read_bytes()
    assert main(["simulate", "--space", "composite", str(d), "-o", str(t), "-q"]) == 0
    out = pd.read_csv(t)
    assert list(out.columns) == [*DESIGN_COLUMNS, "soft_count", "toughness"]
    np.testing.assert_allclose(out["toughness"], toughness(cells).toughness, rtol=1e-12)


@pytest.mark.parametrize("args, needle", [
    (["--space", "composite"], "--soft-fraction is required for the composite space"),
    (["--space", "composite", "--soft-fraction", "0.3"], "--soft-fraction must be a multiple of 1/32"),
    (["--zg", "3.5", "--soft-fraction", "0.25"], "--soft-fraction is a composite option"),
    (["--space", "peaks", "--soft-fraction", "0.25"], "--soft-fraction is a composite option"),
    (["--space", "composite", "--soft-fraction", "0.25", "--zg", "3"], "--zg is a lattice option"),
])
def test_bad_sample_options_are_named(tmp_path, capsys, args, needle):
    out = tmp_path / "d.csv"
    assert main(["sample", *args, "-n", "5", "-o", str(out)]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_simulate_names_a_bad_cell(tmp_path, capsys):
    d = tmp_path / "d.csv"
    rows = np.ones((3, 32), int)
    rows[1, 5] = 2
    pd.DataFrame(rows, columns=list(DESIGN_COLUMNS)).to_csv(d, index=False)
    out = tmp_path / "t.csv"
    assert main(["simulate", "--space", "composite", str(d), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 1 column x05 is 2" in err and not out.exists()
