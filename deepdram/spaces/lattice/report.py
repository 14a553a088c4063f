"""The `data_report` stage: figures, tables and metrics that describe the simulated datasets.

`build_data_report` writes, into one folder (default in the pipeline: outputs/reports/data):

- `cells_envelope.png`, `tilings_envelope.png`: the property envelopes of the unit cells (paper
  Fig. 1b) and of the tilings (Fig. 3b): E11 vs E22 coloured by nu12, nu12 vs nu21 coloured by E11,
  drawn from a seeded subsample; the paper's quoted ranges as a dashed box.
- `nu_histograms.png`: nu12 and nu21 of all cells, one step histogram per Z_g, log counts.
- `size_evolution.png` / `size_evolution.csv`: one design at all 100 tiling sizes (Fig. 3c,
  supplementary Fig. 13), computed with the tiling solver.
- `nu_ranges.csv` / `nu_ranges.md`: supplementary Table 2 (probability of the Poisson's ratio
  ranges), this dataset next to the paper's 4 x 4 row, plus per-Z_g rows.
- `plots/*.csv`: small (<= 5000 rows), deterministic data files for `dvc plots show`
  (see `render_dvc_plots_config`).
- `data_report.json`: row counts, property ranges, the nu-range comparison (the stage's metrics).

Histograms and probabilities use every row (vectorised); only scatter plots subsample. Every file
is written atomically (temporary file in the same folder, then os.replace), and the outputs are
byte-for-byte reproducible for the same inputs and seed (no timestamps or software tags in PNGs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepdram.spaces.lattice.constants import (
    BIT_COLUMNS,
    NU_RANGE,
    PROPERTY_COLUMNS,
    SIZE_COLUMNS,
    TILING_SIZES,
    ZG_VALUES,
)
from deepdram.data.atomic import save_png, write_text
from deepdram.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

# Output file names, relative to out_dir.
CELLS_ENVELOPE_PNG = "cells_envelope.png"
TILINGS_ENVELOPE_PNG = "tilings_envelope.png"
NU_HISTOGRAMS_PNG = "nu_histograms.png"
SIZE_EVOLUTION_PNG = "size_evolution.png"
SIZE_EVOLUTION_CSV = "size_evolution.csv"
NU_RANGES_CSV = "nu_ranges.csv"
NU_RANGES_MD = "nu_ranges.md"
METRICS_JSON = "data_report.json"
PLOTS_SUBDIR = "plots"
PLOT_NU_HISTOGRAM_CSV = f"{PLOTS_SUBDIR}/nu_histogram.csv"
PLOT_CELLS_ENVELOPE_CSV = f"{PLOTS_SUBDIR}/cells_envelope.csv"
PLOT_TILINGS_ENVELOPE_CSV = f"{PLOTS_SUBDIR}/tilings_envelope.csv"
PLOT_SIZE_EVOLUTION_CSV = f"{PLOTS_SUBDIR}/size_evolution.csv"
PNG_FILES = (CELLS_ENVELOPE_PNG, TILINGS_ENVELOPE_PNG, NU_HISTOGRAMS_PNG, SIZE_EVOLUTION_PNG)
DEFAULT_OUT_DIR = "outputs/reports/data"  # relative to the repository root

MAX_SCATTER_POINTS = 200_000  # points drawn per envelope figure
MAX_PLOT_ROWS = 5_000  # rows per DVC plot data file
HIST_BIN_WIDTH = 0.05  # nu histogram bin width; the Table-2 edges -0.5, 0, 0.5 are bin edges
DPI = 150
PLOT_DECIMALS = 6  # rounding of properties in the DVC plot files (keeps them small)
PCT_DECIMALS = 6  # rounding of percentages in data_report.json

LABELS = {
    "E11": r"$E_{11}/E_b$ [-]",
    "E22": r"$E_{22}/E_b$ [-]",
    "nu12": r"$\nu_{12}$ [-]",
    "nu21": r"$\nu_{21}$ [-]",
}


# --- Atomic writes ----------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    write_text(path, text)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    write_text(path, df.to_csv(index=False, lineterminator="\n"))


def _write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _save_png(path: Path, fig) -> None:
    """Save a Figure as PNG without metadata that changes between runs."""
    save_png(path, fig, dpi=DPI)


# --- Helpers ----------------------------------------------------------------------------------


def _figure(**kwargs):
    """A matplotlib Figure on the Agg canvas, made without pyplot (no global figure state)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # headless; never switch the backend of a caller's live pyplot
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _require(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what} table is missing column(s): {', '.join(missing)}")


def _num(x, ndigits: int | None = None) -> float | None:
    """A JSON-safe float (None for NaN/inf), optionally rounded."""
    x = float(x)
    if not np.isfinite(x):
        return None
    return round(x, ndigits) if ndigits is not None else x


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return np.asarray(df[name].to_numpy(), dtype=np.float64)


def _zg_label(z: float) -> str:
    return f"{z:.1f}"


def _zg_field(z: float) -> str:
    """Column-name form of a Z_g value without dots (Vega reads dots as nested fields)."""
    return f"zg{z:.1f}".replace(".", "_")


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    """Row indices of a seeded random subsample (random order), all rows if n <= k."""
    rng = np.random.default_rng(seed)
    if n <= k:
        return rng.permutation(n)
    return rng.choice(n, size=k, replace=False)


def _design_key(design: np.ndarray) -> int:
    from deepdram.spaces.lattice.geometry import to_keys

    return int(to_keys(design[None])[0])


def _column_ranges(df: pd.DataFrame, columns) -> dict:
    out = {}
    for c in columns:
        if c not in df.columns:
            continue
        v = _col(df, c)
        finite = np.isfinite(v)
        out[c] = {
            "min": _num(v[finite].min()) if finite.any() else None,
            "max": _num(v[finite].max()) if finite.any() else None,
            "nonfinite": int((~finite).sum()),
        }
    return out


# --- Poisson's ratio ranges (supplementary Table 2) ------------------------------------------


def _table2(paper_tables: dict) -> tuple[list[str], np.ndarray, list[float], int]:
    """Bin labels, edges, the paper's percentages for this project's grid, and that grid."""
    try:
        t = paper_tables["table2_nu_range_probability"]
        bins = [str(b) for b in t["bins"]]
        edges = np.asarray([float(e) for e in t["edges"]])
        grid = int(t.get("this_project_grid", 4))
        paper = [float(v) for v in t["by_grid"][grid]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(
            f"paper_tables: table2_nu_range_probability needs bins, edges and by_grid[4] ({exc!r})"
        ) from None
    if len(edges) != len(bins) + 1 or len(paper) != len(bins) or np.any(np.diff(edges) <= 0):
        raise InputError("paper_tables: table2 needs len(edges) == len(bins) + 1 == len(by_grid row) + 1, rising")
    return bins, edges, paper, grid


def _range_counts(values: np.ndarray, edges: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups + 1, n_bins) counts of finite values in left-closed bins [e_k, e_k+1).

    Row g counts values whose group code is g; the last row counts all values (codes -1 too).
    """
    n_bins = len(edges) - 1
    finite = np.isfinite(values)
    # side="right": a value equal to an inner edge belongs to the bin that starts there
    b = np.searchsorted(edges[1:-1], values[finite], side="right")
    g = groups[finite]
    out = np.zeros((n_groups + 1, n_bins), dtype=np.int64)
    ok = g >= 0
    out[:n_groups] = np.bincount(g[ok] * n_bins + b[ok], minlength=n_groups * n_bins).reshape(n_groups, n_bins)
    out[n_groups] = np.bincount(b, minlength=n_bins)
    return out


def _percent(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * counts / np.maximum(total, 1), np.nan)


def nu_range_table(cells: pd.DataFrame, paper_tables: dict) -> tuple[pd.DataFrame, dict]:
    """Supplementary Table 2 for `cells`: nu12 and nu21 pooled, overall and per Z_g.

    The paper's column heads read "nu12, nu21 < -0.5" etc.: both directions are counted together,
    so each cell contributes two values. Non-finite values are left out (and counted).
    Returns the long table (rows: subset x range) and a metrics dict.
    """
    import pandas as pd

    bins, edges, paper, grid = _table2(paper_tables)
    codes, zgs = pd.factorize(cells["zg"], sort=True)
    zgs = np.asarray(zgs, dtype=float)
    counts = sum(_range_counts(_col(cells, c), edges, codes, len(zgs)) for c in ("nu12", "nu21"))
    pct = _percent(counts)
    overall = pct[-1]
    diff = overall - np.asarray(paper)
    n_values = 2 * len(cells)
    rows = []
    subsets = [("all", -1, paper)] + [(f"Zg={_zg_label(z)}", i, None) for i, z in enumerate(zgs)]
    for name, i, ref in subsets:
        for k, label in enumerate(bins):
            rows.append({
                "subset": name,
                "range": label,
                "count": int(counts[i, k]),
                "deepdram_percent": round(float(pct[i, k]), 4),
                "paper_percent": ref[k] if ref is not None else np.nan,
                "difference": round(float(pct[i, k] - ref[k]), 4) if ref is not None else np.nan,
            })
    table = pd.DataFrame(rows)
    metrics = {
        "pooled": "nu12 and nu21 of all cells (two values per cell), finite values only",
        "paper_grid": grid,
        "values": int(counts[-1].sum()),
        "nonfinite_values": int(n_values - counts[-1].sum()),
        "deepdram_percent": {b: _num(v, PCT_DECIMALS) for b, v in zip(bins, overall)},
        "paper_percent": dict(zip(bins, paper)),
        "difference_pp": {b: _num(v, PCT_DECIMALS) for b, v in zip(bins, diff)},
        "max_abs_difference_pp": (_num(np.nanmax(np.abs(diff)), PCT_DECIMALS)
                                  if np.isfinite(diff).any() else None),
        "by_zg": {
            _zg_label(z): {b: _num(v, PCT_DECIMALS) for b, v in zip(bins, pct[i])}
            for i, z in enumerate(zgs)
        },
    }
    return table, metrics


def _nu_ranges_markdown(table: pd.DataFrame, metrics: dict, n_cells: int) -> str:
    """Markdown in the layout of supplementary Table 2 (heads as in the paper)."""
    heads = [
        r"ν12, ν21 < -0.5",
        r"-0.5 ≤ ν12, ν21 < 0",
        r"0 ≤ ν12, ν21 < 0.5",
        r"ν12, ν21 ≥ 0.5",
    ]
    bins = list(metrics["deepdram_percent"])
    if len(bins) != len(heads):
        heads = bins
    grid = metrics["paper_grid"]

    def fmt(v) -> str:
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"

    def line(cells_) -> str:
        return "| " + " | ".join(cells_) + " |"

    out = [
        "# Poisson's ratio ranges (supplementary Table 2)",
        "",
        f"Probability (%) of finding each range of the Poisson's ratio. As in the paper's column heads, "
        f"nu12 and nu21 are pooled: {metrics['values']:,} values from {n_cells:,} unit cells "
        f"({metrics['nonfinite_values']} non-finite values left out).",
        "",
        line(["n_x = n_y"] + heads),
        line(["---"] * (len(heads) + 1)),
        line([f"{grid} (paper)"] + [fmt(v) for v in metrics["paper_percent"].values()]),
        line([f"{grid} (deepdram)"] + [fmt(v) for v in metrics["deepdram_percent"].values()]),
        line(["difference (pp)"] + [
            ("n/a" if v is None else f"{v:+.2f}") for v in metrics["difference_pp"].values()
        ]),
        "",
        f"Largest absolute difference: {fmt(metrics['max_abs_difference_pp'])} percentage points.",
        "",
        "## Per connectivity Z_g (deepdram only; the paper reports the pooled row)",
        "",
        line(["Z_g", "values"] + heads),
        line(["---"] * (len(heads) + 2)),
    ]
    for subset, grp in table[table["subset"] != "all"].groupby("subset", sort=False):
        out.append(line([subset.removeprefix("Zg="), f"{int(grp['count'].sum()):,}"]
                        + [fmt(v) for v in grp["deepdram_percent"]]))
    return "\n".join(out) + "\n"


# --- Histograms -------------------------------------------------------------------------------


def nu_histograms(cells: pd.DataFrame) -> tuple[np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """Bin edges and counts of nu12 / nu21 per Z_g over all rows.

    Bins are HIST_BIN_WIDTH wide, spanning the finite data (clipped to constants.NU_RANGE; values
    beyond go to the end bins). Keys: (direction, Z_g label) for every value in ZG_VALUES (zeros
    where absent) and (direction, "all").
    """
    import pandas as pd

    w = HIST_BIN_WIDTH
    arrays = {c: _col(cells, c) for c in ("nu12", "nu21")}
    lo, hi = np.inf, -np.inf
    for v in arrays.values():
        f = v[np.isfinite(v)]
        if f.size:
            lo, hi = min(lo, f.min()), max(hi, f.max())
    if not np.isfinite(lo):
        lo, hi = -0.5, 0.5
    lo = max(np.floor(lo / w) * w, NU_RANGE[0])
    hi = min(np.ceil(hi / w) * w, NU_RANGE[1])
    n_bins = max(1, int(round((hi - lo) / w)))
    edges = lo + w * np.arange(n_bins + 1)
    codes, zgs = pd.factorize(cells["zg"], sort=True)
    zgs = np.asarray(zgs, dtype=float)
    out: dict[tuple[str, str], np.ndarray] = {}
    for c, v in arrays.items():
        finite = np.isfinite(v)
        b = np.clip(np.floor((v[finite] - lo) / w).astype(np.int64), 0, n_bins - 1)
        g = codes[finite]
        ok = g >= 0
        per = np.bincount(g[ok] * n_bins + b[ok], minlength=len(zgs) * n_bins).reshape(len(zgs), n_bins)
        for z in ZG_VALUES:
            out[c, _zg_label(z)] = np.zeros(n_bins, dtype=np.int64)
        for i, z in enumerate(zgs):
            out[c, _zg_label(z)] = per[i]
        out[c, "all"] = np.bincount(b, minlength=n_bins)
    return edges, out


def _histogram_plot_frame(edges: np.ndarray, hist: dict) -> pd.DataFrame:
    """Wide table for DVC: bin_center, then nu12_zg2_5 ... nu21_zg4_5, nu12_all, nu21_all."""
    import pandas as pd

    data = {"bin_center": np.round(0.5 * (edges[:-1] + edges[1:]), 6)}
    for c in ("nu12", "nu21"):
        for z in ZG_VALUES:
            data[f"{c}_{_zg_field(z)}"] = hist[c, _zg_label(z)]
        data[f"{c}_all"] = hist[c, "all"]
    return pd.DataFrame(data)


def _histogram_figure(edges: np.ndarray, hist: dict, n_cells: int, bins_edges: np.ndarray):
    import matplotlib as mpl

    fig = _figure(figsize=(11, 4.4))
    axes = fig.subplots(1, 2, sharey=True)
    colours = mpl.colormaps["viridis"](np.linspace(0.0, 0.9, len(ZG_VALUES)))
    for ax, c in zip(axes, ("nu12", "nu21")):
        for z, colour in zip(ZG_VALUES, colours):
            counts = hist[c, _zg_label(z)]
            if counts.sum() == 0:
                continue
            ax.stairs(counts, edges, color=colour, lw=1.3, label=f"$Z_g$ = {_zg_label(z)}")
        ax.stairs(hist[c, "all"], edges, color="0.3", lw=1.0, ls=":", label="all")
        for e in bins_edges[np.isfinite(bins_edges)]:
            ax.axvline(e, color="0.6", lw=0.8, ls="--", zorder=0)
        ax.set_yscale("log")
        ax.set_xlabel(LABELS[c])
        ax.set_xlim(edges[0], edges[-1])
        ax.grid(alpha=0.25, which="major")
    axes[0].set_ylabel(f"count per bin (width {HIST_BIN_WIDTH:g})")
    axes[1].legend(loc="upper right", fontsize=8, frameon=False)
    fig.suptitle(
        f"Poisson's ratios of {n_cells:,} unit cells by connectivity "
        "(dashed: Table 2 range edges)", fontsize=11
    )
    return fig


# --- Envelopes --------------------------------------------------------------------------------


def _envelope_figure(df: pd.DataFrame, idx: np.ndarray, title: str, paper_range: dict | None):
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    e11, e22, nu12, nu21 = (_col(df, c)[idx] for c in PROPERTY_COLUMNS)
    fig = _figure(figsize=(11.5, 5.0))
    ax_e, ax_nu = fig.subplots(1, 2)
    size = float(np.clip(2.0e4 / max(len(idx), 1), 1.0, 10.0))  # marker area: bigger when few
    marker = "s" if len(idx) > 20_000 else "o"  # tiny squares draw twice as fast as tiny circles
    ok_nu = np.isfinite(nu12)
    vmax = float(np.percentile(np.abs(nu12[ok_nu]), 99.5)) if ok_nu.any() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    sc = ax_e.scatter(e11, e22, c=nu12, s=size, marker=marker, lw=0, cmap="coolwarm",
                      norm=Normalize(-vmax, vmax), rasterized=True)
    fig.colorbar(sc, ax=ax_e, label=LABELS["nu12"], extend="both", shrink=0.9)
    ok_e = np.isfinite(e11)
    emax = float(e11[ok_e].max()) if ok_e.any() else 1.0
    sc = ax_nu.scatter(nu12, nu21, c=e11, s=size, marker=marker, lw=0, cmap="viridis",
                       norm=Normalize(0.0, emax if emax > 0 else 1.0), rasterized=True)
    fig.colorbar(sc, ax=ax_nu, label=LABELS["E11"], shrink=0.9)
    ax_e.set_xlabel(LABELS["E11"])
    ax_e.set_ylabel(LABELS["E22"])
    ax_nu.set_xlabel(LABELS["nu12"])
    ax_nu.set_ylabel(LABELS["nu21"])
    ax_nu.axhline(0, color="0.5", lw=0.6)
    ax_nu.axvline(0, color="0.5", lw=0.6)
    if paper_range:
        (elo, ehi), (nlo, nhi) = paper_range["E"], paper_range["nu"]
        kw = dict(fill=False, ls="--", lw=1.0, ec="k")
        for ax, lo, hi in ((ax_e, elo, ehi), (ax_nu, nlo, nhi)):
            ax.add_patch(Rectangle((lo, lo), hi - lo, hi - lo, **kw))
            ax.update_datalim([(lo, lo), (hi, hi)])  # keep the whole box in view
            ax.autoscale_view()
    for ax in (ax_e, ax_nu):
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(alpha=0.25)
    box = " (dashed: paper's range)" if paper_range else ""
    ax_e.set_title(f"elastic moduli{box}", fontsize=10)
    ax_nu.set_title(f"Poisson's ratios{box}", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


def _envelope_plot_frame(df: pd.DataFrame, idx: np.ndarray, extra: tuple[str, ...]) -> pd.DataFrame:
    keep = np.sort(idx[:MAX_PLOT_ROWS])
    cols = [c for c in (*PROPERTY_COLUMNS, *extra) if c in df.columns]
    out = df[cols].iloc[keep].reset_index(drop=True)
    return out.round({c: PLOT_DECIMALS for c in PROPERTY_COLUMNS})


# --- Size evolution (Fig. 3c, supplementary Fig. 13) ------------------------------------------


def size_evolution(design: np.ndarray) -> pd.DataFrame:
    """Properties of one design at all 100 tiling sizes: columns d1, d2, E11, E22, nu12, nu21."""
    import pandas as pd

    from threadpoolctl import threadpool_limits

    from deepdram.spaces.lattice.tiling import solve_tilings

    sizes = np.asarray(TILING_SIZES)
    d1, d2 = (a.ravel() for a in np.meshgrid(sizes, sizes, indexing="ij"))
    # One design per size: the blocks are small, and multi-threaded BLAS only adds overhead here
    # (4-8x slower than one thread when other processes share the cores).
    with threadpool_limits(1):
        props = solve_tilings(np.repeat(np.asarray(design)[None], len(d1), 0), d1, d2,
                              threads=1).properties
    df = pd.DataFrame({"d1": d1, "d2": d2})
    for k, c in enumerate(PROPERTY_COLUMNS):
        df[c] = props[:, k]
    return df


def _draw_cell(ax, design: np.ndarray) -> None:
    from deepdram.spaces.lattice.geometry import BEAMS, NODE_XY

    for a, b in BEAMS[design.astype(bool)]:
        ax.plot(*NODE_XY[[a, b]].T, color="k", lw=1.6, solid_capstyle="round")
    ax.plot(*NODE_XY.T, "o", color="tab:red", ms=3.5)
    ax.set_aspect("equal")
    ax.set_xlim(-2.5, 25)
    ax.set_ylim(-2.5, 25)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _size_evolution_figure(evo: pd.DataFrame, design: np.ndarray, caption: str):
    sizes = np.asarray(TILING_SIZES)
    edges = np.concatenate([sizes - 1, [sizes[-1] + 1]])
    fig = _figure(figsize=(10.5, 6.8))
    gs = fig.add_gridspec(2, 3, width_ratios=[0.55, 1, 1])
    _draw_cell(fig.add_subplot(gs[:, 0]), design)
    fig.axes[0].set_title(caption, fontsize=9)
    ev = evo.sort_values(["d1", "d2"])
    for k, c in enumerate(PROPERTY_COLUMNS):
        ax = fig.add_subplot(gs[k // 2, 1 + k % 2])
        grid = ev[c].to_numpy().reshape(len(sizes), len(sizes))  # [d1, d2]
        mesh = ax.pcolormesh(edges, edges, grid.T, cmap="viridis" if c.startswith("E") else "plasma",
                             rasterized=False)
        fig.colorbar(mesh, ax=ax, label=LABELS[c])
        ax.set_xticks(sizes)
        ax.set_yticks(sizes)
        ax.tick_params(labelsize=8)
        ax.set_aspect("equal")
        ax.set_xlabel("$D_1$ (cells along direction 1)")
        ax.set_ylabel("$D_2$ (cells along direction 2)")
        last = grid[-1, -1]
        ax.set_title(f"{LABELS[c].split(' ')[0]}: {grid.min():.3g} .. {grid.max():.3g} (20x20: {last:.3g})",
                     fontsize=9)
    fig.suptitle("Evolution of the elastic properties with the tiling size $D_1 \\times D_2$", fontsize=11)
    return fig


def _choose_design(tilings: pd.DataFrame, cells: pd.DataFrame, example_design) -> tuple[np.ndarray, str]:
    from deepdram.spaces.lattice.geometry import check_designs

    if example_design is not None:
        return check_designs(example_design, what="example_design")[0], "example_design argument"
    for name, df in (("tilings", tilings), ("cells", cells)):
        if len(df) and all(c in df.columns for c in BIT_COLUMNS):
            row = df[list(BIT_COLUMNS)].iloc[0].to_numpy()
            return check_designs(row, what=f"first {name} design")[0], f"first row of {name}"
    raise InputError("no design for the size-evolution plot: pass example_design or non-empty tilings")


def _dataset_agreement(tilings: pd.DataFrame, design: np.ndarray, evo: pd.DataFrame) -> dict:
    """Compare the tilings rows of `design` with the freshly solved size evolution."""
    if not len(tilings) or not all(c in tilings.columns for c in (*BIT_COLUMNS, *SIZE_COLUMNS)):
        return {"rows": 0, "max_abs_diff": None}
    mask = np.ones(len(tilings), dtype=bool)
    for k, c in enumerate(BIT_COLUMNS):
        mask &= tilings[c].to_numpy() == design[k]
    rows = tilings.loc[mask, [*SIZE_COLUMNS, *PROPERTY_COLUMNS]]
    merged = rows.merge(evo, on=list(SIZE_COLUMNS), suffixes=("_data", ""))
    if not len(merged):
        return {"rows": 0, "max_abs_diff": None}
    diff = np.abs(merged[[f"{c}_data" for c in PROPERTY_COLUMNS]].to_numpy(float)
                  - merged[list(PROPERTY_COLUMNS)].to_numpy(float))
    return {"rows": int(len(merged)), "max_abs_diff": _num(np.nanmax(diff)) if np.isfinite(diff).any() else None}


# --- The stage --------------------------------------------------------------------------------


def build_data_report(
    cells: pd.DataFrame,
    tilings: pd.DataFrame,
    out_dir: Path,
    paper_tables: dict,
    example_design: np.ndarray | None = None,
    seed: int = 0,
    *,
    max_scatter_points: int = MAX_SCATTER_POINTS,
) -> dict:
    """Write the data report into `out_dir` and return its metrics (also in data_report.json).

    `cells`: b00..b41, zg, E11, E22, nu12, nu21 (E over E_b). `tilings`: the same plus d1, d2 and
    split. `paper_tables`: data/reference/paper_tables.yaml, loaded. `example_design`: the (42,)
    design for the size-evolution figure; if None, the first row of `tilings` (the first row of
    `cells` if there are no tilings). `seed` fixes the scatter subsamples.
    """
    out_dir = Path(out_dir)
    _require(cells, ("zg", *PROPERTY_COLUMNS), "cells")
    _require(tilings, (*PROPERTY_COLUMNS, *SIZE_COLUMNS), "tilings")
    if not len(cells):
        raise InputError("cells table is empty: nothing to report")
    bins, t2_edges, _, _ = _table2(paper_tables)
    text = paper_tables.get("text", {}) if isinstance(paper_tables, dict) else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PLOTS_SUBDIR).mkdir(exist_ok=True)

    # 5. Table 2 (all rows)
    table, nu_metrics = nu_range_table(cells, paper_tables)
    _write_csv(out_dir / NU_RANGES_CSV, table)
    _write_text(out_dir / NU_RANGES_MD, _nu_ranges_markdown(table, nu_metrics, len(cells)))

    # 3. nu histograms (all rows)
    edges, hist = nu_histograms(cells)
    _write_csv(out_dir / PLOT_NU_HISTOGRAM_CSV, _histogram_plot_frame(edges, hist))
    fig = _histogram_figure(edges, hist, len(cells), t2_edges)
    _save_png(out_dir / NU_HISTOGRAMS_PNG, fig)

    # 1, 2. envelopes (seeded subsamples; the CSV takes the first MAX_PLOT_ROWS of the same draw)
    for df, name, png, csv, extra, rng_key, title in (
        (cells, "cells", CELLS_ENVELOPE_PNG, PLOT_CELLS_ENVELOPE_CSV, ("zg",),
         "cell_property_range", "unit cells"),
        (tilings, "tilings", TILINGS_ENVELOPE_PNG, PLOT_TILINGS_ENVELOPE_CSV, ("zg", "d1", "d2"),
         "tiling_property_range", "tilings (combinatorial designs)"),
    ):
        idx = _subsample(len(df), max_scatter_points, seed)
        shown = f"{len(idx):,} of {len(df):,}" if len(idx) < len(df) else f"all {len(df):,}"
        fig = _envelope_figure(df, idx, f"Elastic properties of {title} ({shown} shown)",
                               text.get(rng_key))
        _save_png(out_dir / png, fig)
        _write_csv(out_dir / csv, _envelope_plot_frame(df, idx, extra))

    # 4. size evolution of one design
    design, source = _choose_design(tilings, cells, example_design)
    evo = size_evolution(design)
    from deepdram.spaces.lattice.geometry import zg_of

    key = _design_key(design)
    zg = float(zg_of(design[None])[0])
    _write_csv(out_dir / SIZE_EVOLUTION_CSV, evo)
    plot_evo = evo.copy()
    plot_evo.insert(2, "cells", plot_evo["d1"] * plot_evo["d2"])
    plot_evo = plot_evo.round({c: PLOT_DECIMALS for c in PROPERTY_COLUMNS})
    _write_csv(out_dir / PLOT_SIZE_EVOLUTION_CSV, plot_evo)
    caption = f"unit cell\n({source})\nkey {key:#013x}\n$Z_g$ = {zg:g}"
    fig = _size_evolution_figure(evo, design, caption)
    _save_png(out_dir / SIZE_EVOLUTION_PNG, fig)

    # 7. metrics
    rows: dict = {"cells": int(len(cells)), "tilings": int(len(tilings))}
    if "split" in tilings.columns:
        counts = tilings["split"].astype(str).value_counts()
        rows["tilings_by_split"] = {str(k): int(counts[k]) for k in sorted(counts.index)}
    if "split" in cells.columns:
        counts = cells["split"].astype(str).value_counts()
        rows["cells_by_split"] = {str(k): int(counts[k]) for k in sorted(counts.index)}
    zc = cells["zg"].value_counts()
    rows["cells_by_zg"] = {_zg_label(float(k)): int(zc[k]) for k in sorted(zc.index)}
    at20 = evo[(evo["d1"] == TILING_SIZES[-1]) & (evo["d2"] == TILING_SIZES[-1])].iloc[0]
    metrics = {
        "rows": rows,
        "cells": _column_ranges(cells, ("zg", *PROPERTY_COLUMNS)),
        "tilings": _column_ranges(tilings, ("zg", *SIZE_COLUMNS, *PROPERTY_COLUMNS)),
        "nu_ranges": nu_metrics,
        "size_evolution": {
            "design_source": source,
            "design_key": key,
            "zg": zg,
            "at_20x20": {c: _num(at20[c]) for c in PROPERTY_COLUMNS},
            "dataset_check": _dataset_agreement(tilings, design, evo),
        },
        "seed": int(seed),
        "scatter_points": int(min(max_scatter_points, max(len(cells), len(tilings)))),
    }
    _write_json(out_dir / METRICS_JSON, metrics)
    return metrics


# --- DVC plots --------------------------------------------------------------------------------


def render_dvc_plots_config(out_dir: str = DEFAULT_OUT_DIR) -> dict:
    """The top-level `plots:` section of dvc.yaml for this report, as {"plots": [...]}.

    Paths are relative to the repository root, with the report in `out_dir`. Data plots use DVC's
    built-in templates (scatter, linear); the four PNGs are image plots. Validated against DVC's
    own dvc.yaml schema in the tests.
    """
    d = str(out_dir).rstrip("/")
    cells, tilings = f"{d}/{PLOT_CELLS_ENVELOPE_CSV}", f"{d}/{PLOT_TILINGS_ENVELOPE_CSV}"
    hist, evo = f"{d}/{PLOT_NU_HISTOGRAM_CSV}", f"{d}/{PLOT_SIZE_EVOLUTION_CSV}"
    zg_fields = lambda c: [f"{c}_{_zg_field(z)}" for z in ZG_VALUES]  # noqa: E731
    entries = [
        {"cells_envelope_E": {"template": "scatter", "x": "E11", "y": {cells: "E22"},
                              "title": "Unit cells: E11/Eb vs E22/Eb (5000-row sample)",
                              "x_label": "E11/Eb", "y_label": "E22/Eb"}},
        {"cells_envelope_nu": {"template": "scatter", "x": "nu12", "y": {cells: "nu21"},
                               "title": "Unit cells: nu12 vs nu21 (5000-row sample)",
                               "x_label": "nu12", "y_label": "nu21"}},
        {"tilings_envelope_E": {"template": "scatter", "x": "E11", "y": {tilings: "E22"},
                                "title": "Tilings: E11/Eb vs E22/Eb (5000-row sample)",
                                "x_label": "E11/Eb", "y_label": "E22/Eb"}},
        {"tilings_envelope_nu": {"template": "scatter", "x": "nu12", "y": {tilings: "nu21"},
                                 "title": "Tilings: nu12 vs nu21 (5000-row sample)",
                                 "x_label": "nu12", "y_label": "nu21"}},
        {"nu12_histogram": {"template": "linear", "x": "bin_center", "y": {hist: zg_fields("nu12")},
                            "title": "Unit cells: nu12 histogram per Z_g (all rows)",
                            "x_label": "nu12 (bin centre)", "y_label": "count"}},
        {"nu21_histogram": {"template": "linear", "x": "bin_center", "y": {hist: zg_fields("nu21")},
                            "title": "Unit cells: nu21 histogram per Z_g (all rows)",
                            "x_label": "nu21 (bin centre)", "y_label": "count"}},
        {"size_evolution_E": {"template": "scatter", "x": "cells", "y": {evo: ["E11", "E22"]},
                              "title": "One design at all 100 tiling sizes: moduli vs D1*D2",
                              "x_label": "D1 x D2 (cells)", "y_label": "E/Eb"}},
        {"size_evolution_nu": {"template": "scatter", "x": "cells", "y": {evo: ["nu12", "nu21"]},
                               "title": "One design at all 100 tiling sizes: Poisson's ratios vs D1*D2",
                               "x_label": "D1 x D2 (cells)", "y_label": "nu"}},
    ]
    entries += [f"{d}/{png}" for png in PNG_FILES]
    return {"plots": entries}
