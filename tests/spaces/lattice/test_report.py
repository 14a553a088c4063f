"""The data_report stage: every file written, numbers checked independently, reproducible bytes."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from deepdram.errors import InputError
from deepdram.paths import PAPER_TABLES_PATH
from deepdram.spaces.lattice import fem, report, tiling
from deepdram.spaces.lattice import geometry as lattice
from deepdram.spaces.lattice.constants import BIT_COLUMNS, PROPERTY_COLUMNS, TILING_SIZES, ZG_VALUES

PAPER = yaml.safe_load(PAPER_TABLES_PATH.read_text())
FILES = (
    "cells_envelope.png",
    "tilings_envelope.png",
    "nu_histograms.png",
    "size_evolution.png",
    "size_evolution.csv",
    "nu_ranges.csv",
    "nu_ranges.md",
    "data_report.json",
    "plots/nu_histogram.csv",
    "plots/cells_envelope.csv",
    "plots/tilings_envelope.csv",
    "plots/size_evolution.csv",
)
PNGS = [f for f in FILES if f.endswith(".png")]


def with_properties(df: pd.DataFrame, props: np.ndarray) -> pd.DataFrame:
    for k, c in enumerate(PROPERTY_COLUMNS):
        df[c] = props[:, k]
    return df


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """2,000 real cells per Z_g (FE) and 300 real tilings at random even sizes (tiling solver)."""
    parts = []
    for i, z in enumerate(ZG_VALUES):
        d = lattice.sample_designs(z, 2000, seed=50 + i)
        parts.append(lattice.to_frame(d, zg=np.full(len(d), z)))
    cells = pd.concat(parts, ignore_index=True)
    with_properties(cells, fem.cell_properties(cells[list(BIT_COLUMNS)].to_numpy()))
    rng = np.random.default_rng(7)
    pick = rng.choice(len(cells), 300, replace=False)
    designs = cells[list(BIT_COLUMNS)].to_numpy()[pick]
    d1, d2 = rng.choice(TILING_SIZES[:6], 300), rng.choice(TILING_SIZES[:6], 300)
    tilings = lattice.to_frame(designs, zg=cells["zg"].to_numpy()[pick], d1=d1, d2=d2)
    with_properties(tilings, tiling.solve_tilings(designs, d1, d2).properties)
    tilings["split"] = rng.choice(["train", "val", "test"], 300, p=[0.8, 0.1, 0.1])
    return cells, tilings


@pytest.fixture(scope="module")
def built(data, tmp_path_factory) -> tuple[Path, dict]:
    cells, tilings = data
    out = tmp_path_factory.mktemp("report") / "data"  # not existing yet: the report creates it
    metrics = report.build_data_report(cells, tilings, out, PAPER, seed=3)
    return out, metrics


def test_every_file_is_written_and_no_temporary_files_remain(built):
    out, _ = built
    for f in FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == set(FILES)  # nothing else, in particular no .tmp leftovers


@pytest.mark.parametrize("name", PNGS)
def test_pngs_are_valid_images_of_sensible_size(built, name):
    import matplotlib.image as mpimg

    out, _ = built
    png = (out / name).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Software" not in png and b"Matplotlib" not in png  # no version tag: stable bytes
    img = mpimg.imread(out / name)
    h, w = img.shape[:2]
    assert 500 <= w <= 4000 and 400 <= h <= 3000, (w, h)
    assert img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05  # not a blank canvas


def independent_percentages(nu12: np.ndarray, nu21: np.ndarray) -> np.ndarray:
    v = np.concatenate([nu12, nu21])
    v = v[np.isfinite(v)]
    counts = [(v < -0.5).sum(), ((v >= -0.5) & (v < 0)).sum(), ((v >= 0) & (v < 0.5)).sum(), (v >= 0.5).sum()]
    return 100.0 * np.array(counts) / len(v)


def test_nu_range_percentages_match_an_independent_computation(data, built):
    cells, _ = data
    out, metrics = built
    table = pd.read_csv(out / "nu_ranges.csv")
    assert list(table.columns[:6]) == ["subset", "range", "count", "deepdram_percent", "paper_percent", "difference"]
    bins = PAPER["table2_nu_range_probability"]["bins"]
    overall = table[table["subset"] == "all"]
    assert list(overall["range"]) == bins
    expected = independent_percentages(cells["nu12"].to_numpy(), cells["nu21"].to_numpy())
    assert expected.sum() == pytest.approx(100.0)
    assert overall["deepdram_percent"].sum() == pytest.approx(100.0, abs=1e-3)
    np.testing.assert_allclose(overall["deepdram_percent"], expected, atol=1e-4)
    np.testing.assert_allclose(list(metrics["nu_ranges"]["deepdram_percent"].values()), expected, atol=1e-6)
    assert overall["count"].sum() == 2 * len(cells)
    for z in ZG_VALUES:
        part = cells[cells["zg"] == z]
        rows = table[table["subset"] == f"Zg={z:.1f}"]
        exp = independent_percentages(part["nu12"].to_numpy(), part["nu21"].to_numpy())
        np.testing.assert_allclose(rows["deepdram_percent"], exp, atol=1e-4)
        np.testing.assert_allclose(list(metrics["nu_ranges"]["by_zg"][f"{z:.1f}"].values()), exp, atol=1e-6)
        assert rows["paper_percent"].isna().all()


def test_paper_row_equals_the_yaml_and_difference_is_ours_minus_paper(built):
    out, metrics = built
    t2 = PAPER["table2_nu_range_probability"]
    paper = t2["by_grid"][t2["this_project_grid"]]
    overall = pd.read_csv(out / "nu_ranges.csv").query("subset == 'all'")
    assert overall["paper_percent"].tolist() == paper
    np.testing.assert_allclose(overall["difference"], overall["deepdram_percent"] - paper, atol=2e-4)
    assert list(metrics["nu_ranges"]["paper_percent"].values()) == paper
    diffs = np.abs(list(metrics["nu_ranges"]["difference_pp"].values()))
    assert metrics["nu_ranges"]["max_abs_difference_pp"] == pytest.approx(diffs.max(), abs=1e-6)
    md = (out / "nu_ranges.md").read_text()
    assert "| 4 (paper) | 0.05 | 6.63 | 90.47 | 2.84 |" in md
    ours = " | ".join(f"{v:.2f}" for v in overall["deepdram_percent"])
    assert f"| 4 (deepdram) | {ours} |" in md
    for z in ZG_VALUES:
        assert f"\n| {z:.1f} | " in md


def test_values_on_range_edges_fall_in_the_upper_range():
    """Table 2 ranges are left-closed: -0.5, 0 and 0.5 open the next range; NaN is left out."""
    cells = pd.DataFrame({
        "zg": [2.5, 2.5, 3.0, 3.0],
        "E11": 0.1, "E22": 0.1,
        "nu12": [-0.5, 0.0, 0.5, -0.51],
        "nu21": [0.49, -1e-12, np.nan, 7.0],
    })
    table, m = report.nu_range_table(cells, PAPER)
    counts = table.query("subset == 'all'")["count"].tolist()
    assert counts == [1, 2, 2, 2]
    assert m["values"] == 7 and m["nonfinite_values"] == 1
    assert table.query("subset == 'Zg=3.0'")["count"].tolist() == [1, 0, 0, 2]


def test_size_evolution_has_all_100_sizes_and_matches_the_solver(data, built):
    _, tilings = data
    out, metrics = built
    evo = pd.read_csv(out / "size_evolution.csv")
    assert list(evo.columns) == ["d1", "d2", "E11", "E22", "nu12", "nu21"]
    assert len(evo) == 100
    assert evo[["d1", "d2"]].equals(evo[["d1", "d2"]].sort_values(["d1", "d2"]))
    assert set(zip(evo["d1"], evo["d2"])) == set(itertools.product(TILING_SIZES, TILING_SIZES))
    design = tilings[list(BIT_COLUMNS)].iloc[0].to_numpy()  # default: the first tiling's design
    assert metrics["size_evolution"]["design_key"] == int(lattice.to_keys(design[None])[0])
    for d1, d2 in ((2, 20), (14, 6)):
        row = evo[(evo["d1"] == d1) & (evo["d2"] == d2)][list(PROPERTY_COLUMNS)].to_numpy()[0]
        np.testing.assert_allclose(row, tiling.tiling_properties(design, d1, d2), rtol=1e-9, atol=1e-12)
    # the first tiling row itself is in the dataset: the report cross-checks it against the solver
    check = metrics["size_evolution"]["dataset_check"]
    assert check["rows"] >= 1 and check["max_abs_diff"] < 1e-9
    plot = pd.read_csv(out / "plots/size_evolution.csv")
    assert len(plot) == 100 and (plot["cells"] == plot["d1"] * plot["d2"]).all()


def test_metrics_json_counts_and_ranges(data, built):
    cells, tilings = data
    out, metrics = built
    assert json.loads((out / "data_report.json").read_text()) == metrics
    assert metrics["rows"]["cells"] == len(cells) and metrics["rows"]["tilings"] == len(tilings)
    assert metrics["rows"]["tilings_by_split"] == tilings["split"].value_counts().sort_index().to_dict()
    assert metrics["rows"]["cells_by_zg"] == {f"{z:.1f}": 2000 for z in ZG_VALUES}
    for name, df in (("cells", cells), ("tilings", tilings)):
        for c in PROPERTY_COLUMNS:
            assert metrics[name][c]["min"] == df[c].min() and metrics[name][c]["max"] == df[c].max()
    assert metrics["tilings"]["d1"]["max"] <= 12


def test_plot_data_files_are_small_and_consistent(data, built):
    cells, tilings = data
    out, _ = built
    env = pd.read_csv(out / "plots/cells_envelope.csv")
    assert len(env) == 5000 and list(env.columns) == [*PROPERTY_COLUMNS, "zg"]
    assert len(pd.read_csv(out / "plots/tilings_envelope.csv")) == len(tilings)
    hist = pd.read_csv(out / "plots/nu_histogram.csv")
    assert len(hist) <= 5000
    for c in ("nu12", "nu21"):
        assert hist[f"{c}_all"].sum() == len(cells)
        per_zg = [f"{c}_zg{z:.1f}".replace(".", "_") for z in ZG_VALUES]
        assert (hist[per_zg].sum(axis=1) == hist[f"{c}_all"]).all()
        assert hist[per_zg].sum().tolist() == [2000] * 5
    # every envelope row is a real row of the data (rounded to 6 decimals)
    merged = env.merge(cells[list(PROPERTY_COLUMNS)].round(6), on=list(PROPERTY_COLUMNS), how="left",
                       indicator=True)
    assert (merged["_merge"] == "both").all()


def test_second_run_gives_byte_identical_files(data, built, tmp_path):
    cells, tilings = data
    out, _ = built
    report.build_data_report(cells, tilings, tmp_path, PAPER, seed=3)
    for f in FILES:  # PNGs included: no timestamps or software tags in them
        assert (tmp_path / f).read_bytes() == (out / f).read_bytes(), f


def test_dvc_plots_config_is_valid_and_points_at_the_written_files(built):
    out, _ = built
    vol = pytest.importorskip("voluptuous")
    from dvc.schema import MULTI_STAGE_SCHEMA

    config = report.render_dvc_plots_config()
    vol.Schema(MULTI_STAGE_SCHEMA)(config)  # DVC's own dvc.yaml schema
    prefix = "outputs/reports/data/"
    images = [e for e in config["plots"] if isinstance(e, str)]
    assert sorted(images) == sorted(prefix + p for p in PNGS)
    for entry in config["plots"]:
        if isinstance(entry, str):
            continue
        (definition,) = entry.values()
        for path, fields in definition["y"].items():
            assert path.startswith(prefix)
            header = pd.read_csv(out / path.removeprefix(prefix), nrows=0).columns
            for field in [definition["x"], *np.atleast_1d(fields)]:
                assert field in header, (path, field)


def test_dvc_renders_every_plot(built, tmp_path):
    """`dvc plots show --json` in a scratch DVC repo renders all 12 plots without errors."""
    pytest.importorskip("dvc")
    out, _ = built
    (tmp_path / "outputs/reports").mkdir(parents=True)
    (tmp_path / "outputs/reports/data").symlink_to(out, target_is_directory=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(report.render_dvc_plots_config(), sort_keys=False))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    res = subprocess.run([*dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert "errors" not in shown
    kinds = {k: {e["type"] for e in v} for k, v in shown["data"].items()}
    assert len(kinds) == 12
    assert sum(k == {"image"} for k in kinds.values()) == 4
    assert sum(k == {"vega"} for k in kinds.values()) == 8


def test_example_design_nonfinite_values_and_subsample_cap(tmp_path):
    """An explicit design (full design: SPEC 2 x 2 value), NaN nus left out, scatter capped."""
    rng = np.random.default_rng(0)
    designs = lattice.sample_designs(3.0, 120, seed=1)
    cells = with_properties(lattice.to_frame(designs, zg=3.0), fem.cell_properties(designs))
    cells.loc[[3, 7], "nu21"] = np.nan
    tilings = cells.iloc[:10].assign(d1=2, d2=2, split="train")
    full = np.ones(42, dtype=np.uint8)
    m = report.build_data_report(cells, tilings, tmp_path, PAPER, example_design=full,
                                 seed=int(rng.integers(100)), max_scatter_points=50)
    assert m["size_evolution"]["design_source"] == "example_design argument"
    evo = pd.read_csv(tmp_path / "size_evolution.csv").set_index(["d1", "d2"])
    np.testing.assert_allclose(evo.loc[(2, 2)].to_numpy(), [0.2251, 0.2251, 0.2345, 0.2345], rtol=2.5e-4)
    assert m["size_evolution"]["dataset_check"]["rows"] == 0  # the full design is not in `tilings`
    assert m["nu_ranges"]["nonfinite_values"] == 2 and m["nu_ranges"]["values"] == 238
    assert m["cells"]["nu21"]["nonfinite"] == 2
    assert len(pd.read_csv(tmp_path / "plots/cells_envelope.csv")) == 50
    expected = independent_percentages(cells["nu12"].to_numpy(), cells["nu21"].to_numpy())
    np.testing.assert_allclose(list(m["nu_ranges"]["deepdram_percent"].values()), expected, atol=1e-6)


def test_bad_inputs_raise_input_error(data, tmp_path):
    cells, tilings = data
    with pytest.raises(InputError, match="cells table is missing column.*nu21"):
        report.build_data_report(cells.drop(columns="nu21"), tilings, tmp_path, PAPER)
    with pytest.raises(InputError, match="cells table is empty"):
        report.build_data_report(cells.iloc[:0], tilings, tmp_path, PAPER)
    with pytest.raises(InputError, match="table2"):
        report.build_data_report(cells, tilings, tmp_path, {"text": {}})
    bad = np.zeros(42, dtype=np.uint8)
    bad[0] = 1
    with pytest.raises(InputError, match="not all 16 nodes"):
        report.build_data_report(cells.iloc[:50], tilings, tmp_path, PAPER, example_design=bad)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    """The report's PNG writer (through deepdram.data.atomic) keeps the old file when saving fails."""
    target = tmp_path / "x.png"
    target.write_text("old\n")

    class CrashingFigure:
        def savefig(self, fh, **kwargs):
            fh.write(b"half a fi")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        report._save_png(target, CrashingFigure())
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
