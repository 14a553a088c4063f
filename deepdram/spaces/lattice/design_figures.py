"""Figures of the lattice design stage: lattice drawings coloured by beam stress (Fig. 5c), peak-stress
scatter (Fig. 5b), MSE heat maps of the sweep (Fig. 4b), property envelope (Fig. 2b)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from deepdram.data.atomic import write_with

    write_with(path, lambda fh: fig.savefig(fh, dpi=110, bbox_inches="tight", format="png"))
    _plt().close(fig)


def drawings(path: Path, items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """One panel per (title, nodes, beams, beam von Mises) with beams coloured by stress (shared scale)."""
    from matplotlib.collections import LineCollection

    plt = _plt()
    n = max(1, len(items))
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.6 * rows), squeeze=False)
    vmax = max([float(np.max(v)) for *_, v in items] + [1e-12])
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (title, nodes, beams, vm) in zip(axes.ravel(), items):
        lc = LineCollection(nodes[beams], array=np.asarray(vm), cmap="jet", clim=(0, vmax), linewidths=1.6)
        ax.add_collection(lc)
        ax.set_xlim(nodes[:, 0].min() - 2, nodes[:, 0].max() + 2)
        ax.set_ylim(nodes[:, 1].min() - 2, nodes[:, 1].max() + 2)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        fig.colorbar(lc, ax=ax, shrink=0.7, label="von Mises / (Eb eps), max of both load cases")
    _save(fig, path)


def stress_scatter(path: Path, tables: dict, threshold: float) -> None:
    """vm1 vs vm2 of the FE-verified designs of each request (accepted ones filled)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, (name, t) in enumerate(tables.items()):
        if not len(t):
            continue
        ok = t["mse_fe"].to_numpy() <= threshold
        colour = f"C{k % 10}"
        ax.scatter(t["vm1"][ok], t["vm2"][ok], s=8, color=colour, label=f"{name} ({ok.sum()} within MSE)")
        ax.scatter(t["vm1"][~ok], t["vm2"][~ok], s=8, facecolors="none", edgecolors=colour, alpha=0.5)
    ax.set_xlabel("peak von Mises / (Eb eps), load case 1")
    ax.set_ylabel("peak von Mises / (Eb eps), load case 2")
    ax.set_title(f"FE-verified designs (filled: FE MSE <= {threshold:g})")
    ax.legend(fontsize=7)
    _save(fig, path)


def mse_heatmaps(path: Path, sweep, threshold: float) -> None:
    """Best predicted MSE over (nu12, nu21) for each size; grey above the threshold (Fig. 4b)."""
    plt = _plt()
    sizes = list(dict.fromkeys(zip(sweep["d1"], sweep["d2"])))
    nu12 = np.unique(sweep["nu12"])
    nu21 = np.unique(sweep["nu21"])
    cols = min(len(sizes), 4)
    rows = (len(sizes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False,
                             constrained_layout=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (d1, d2) in zip(axes.ravel(), sizes):
        ax.set_axis_on()
        sub = sweep[(sweep["d1"] == d1) & (sweep["d2"] == d2)]
        grid = np.full((len(nu21), len(nu12)), np.nan)
        for _, r in sub.iterrows():
            grid[np.searchsorted(nu21, r["nu21"]), np.searchsorted(nu12, r["nu12"])] = r["best_mse_pred"]
        masked = np.ma.masked_where(~(grid <= threshold), grid)
        im = ax.imshow(masked, origin="lower", cmap=cmap, vmin=0, vmax=threshold, aspect="auto",
                       extent=_extent(nu12) + _extent(nu21))
        ax.set_title(f"D1 = {d1}, D2 = {d2}", fontsize=9)
        ax.set_xlabel("nu12")
        ax.set_ylabel("nu21")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label=f"best predicted MSE (grey: > {threshold:g})")
    _save(fig, path)


def _extent(values: np.ndarray) -> tuple[float, float]:
    """Pixel-edge limits of evenly spaced pixel centres."""
    half = (values[1] - values[0]) / 2 if len(values) > 1 else 0.5
    return float(values[0] - half), float(values[-1] + half)


def envelope(path: Path, train: np.ndarray, generated: np.ndarray) -> None:
    """Unit-cell properties of generated designs against the training data (Fig. 2b, three planes)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (i, j) in zip(axes, ((2, 3), (0, 2), (0, 3))):
        names = ("E11/Eb", "E22/Eb", "nu12", "nu21")
        ax.scatter(train[:, i], train[:, j], s=2, color="lightgrey", label=f"training data ({len(train)})")
        ax.scatter(generated[:, i], generated[:, j], s=2, color="C3", alpha=0.5,
                   label=f"generated, forward-predicted ({len(generated)})")
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    axes[0].legend(fontsize=7, markerscale=4)
    fig.suptitle("Envelope of achieved unit-cell properties: generated designs vs training data")
    _save(fig, path)


def beam_stresses(design: np.ndarray, d1: int, d2: int):
    """(nodes (N, 2) mm, beams (M, 2), properties (4,), von Mises / (Eb eps) (2, M)) of one tiling.

    An assembled sparse solve of the whole frame (fem.solve_frame), independent of the
    substructuring tiling solver; d1 = d2 = 1 is the unit cell.
    """
    from deepdram.spaces.lattice.fem import beam_von_mises, solve_frame
    from deepdram.spaces.lattice.geometry import check_designs, tiling_geometry

    design = check_designs(np.asarray(design).reshape(1, -1))[0]
    nodes, beams = tiling_geometry(design, d1, d2)
    props, u, _ = solve_frame(nodes, beams, 3 * d1 + 1, 3 * d2 + 1, sparse=True)
    vm = np.stack([beam_von_mises(nodes, beams, u[c]) for c in (0, 1)])
    return nodes, beams, props, vm


def selected_drawings(results: dict) -> list:
    """Fig. 5c: per request, the lowest- and highest-stress FE-accepted designs with beam stresses."""
    from deepdram.spaces.lattice.constants import BIT_COLUMNS

    items = []
    for name, r in results.items():
        t = r.table
        ok = t[t["within_threshold"]]
        if not len(ok):
            continue
        picks = [("lowest", ok.iloc[0])] + ([("highest", ok.iloc[-1])] if len(ok) > 1 else [])
        for label, row in picks:
            d = row[list(BIT_COLUMNS)].to_numpy(np.uint8)
            nodes, beams, _, vm = beam_stresses(d, int(row["d1"]), int(row["d2"]))
            items.append((f"{name}: {label} peak stress (vm = {row['vm']:.2f}, MSE_FE = {row['mse_fe']:.3g})",
                          nodes, beams, vm.max(axis=0)))
    return items
