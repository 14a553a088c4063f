"""Exports: the STL is closed, consistently outward-oriented and to scale; the SVG is to scale.

Checked independently of manifold3d: the STL is read back from its bytes, vertices are matched
by coordinates, and every directed edge must appear exactly once with its reverse once (closed,
consistently oriented 2-manifold); the enclosed volume must be positive and within the bounds
the beam layout implies.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces.lattice import export
from deepdram.spaces.lattice.constants import CELL_SIZE, DEPTH, THICKNESS
from deepdram.spaces.lattice.geometry import sample_designs, tiling_geometry

pytest.importorskip("manifold3d")


def edge_check(corners: np.ndarray) -> tuple[bool, float]:
    """(closed and consistently oriented, signed volume) of triangles (F, 3, 3)."""
    _, idx = np.unique(np.round(corners.reshape(-1, 3), 4), axis=0, return_inverse=True)
    f = idx.reshape(-1, 3)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys = {tuple(e) for e in directed.tolist()}
    ok = len(keys) == len(directed) and all((b, a) in keys for a, b in keys) and not (f[:, 0] == f[:, 1]).any()
    vol = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6
    return ok, float(vol)


@pytest.mark.parametrize("zg, d1, d2", [(2.5, 1, 1), (3.5, 2, 4), (4.5, 6, 2)])
def test_stl_is_watertight_oriented_and_to_scale(tmp_path, zg, d1, d2):
    design = sample_designs(zg, 1, seed=int(zg * 10))[0]
    path = export.write_stl(tmp_path / "x.stl", design, d1, d2)
    corners, normals = export.read_stl(path)
    ok, vol = edge_check(corners)
    assert ok and vol > 0
    lo, hi = corners.reshape(-1, 3).min(axis=0), corners.reshape(-1, 3).max(axis=0)
    t = THICKNESS
    np.testing.assert_allclose(hi - lo, [CELL_SIZE * d1 + t, CELL_SIZE * d2 + t, DEPTH], atol=1e-4)
    np.testing.assert_allclose(lo, [-t / 2, -t / 2, 0], atol=1e-4)
    # stored normals point along the right-hand-rule normal (outward for a positive volume)
    rh = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert np.all(np.einsum("ij,ij->i", rh, normals) > 0)
    # volume = depth x area of the union of t-wide beams and t x t node squares, the area
    # measured independently by rasterising the shapes (0.02 mm pixels)
    area = raster_area(*tiling_geometry(design, d1, d2), t, h=0.02)
    assert vol == pytest.approx(DEPTH * area, rel=0.01)


def raster_area(nodes: np.ndarray, beams: np.ndarray, t: float, h: float) -> float:
    """Area of the union of beam rectangles and node squares, counted on an h-spaced pixel grid."""
    xs = np.arange(nodes[:, 0].min() - t, nodes[:, 0].max() + t, h) + h / 2
    ys = np.arange(nodes[:, 1].min() - t, nodes[:, 1].max() + t, h) + h / 2
    mask = np.zeros((len(ys), len(xs)), bool)

    def window(x0, x1, y0, y1):
        i0, i1 = np.searchsorted(xs, [x0, x1])
        j0, j1 = np.searchsorted(ys, [y0, y1])
        return slice(j0, j1), slice(i0, i1)

    for a, b in beams:
        pa, pb = nodes[a], nodes[b]
        u = (pb - pa) / np.linalg.norm(pb - pa)
        sl = window(min(pa[0], pb[0]) - t, max(pa[0], pb[0]) + t, min(pa[1], pb[1]) - t, max(pa[1], pb[1]) + t)
        gx, gy = np.meshgrid(xs[sl[1]] - pa[0], ys[sl[0]] - pa[1])
        along = gx * u[0] + gy * u[1]
        across = -gx * u[1] + gy * u[0]
        mask[sl] |= (along >= 0) & (along <= np.linalg.norm(pb - pa)) & (np.abs(across) <= t / 2)
    for x, y in nodes[np.unique(beams)]:
        mask[window(x - t / 2, x + t / 2, y - t / 2, y + t / 2)] = True
    return float(mask.sum() * h * h)


def test_disconnected_design_is_refused():
    d = np.zeros(42, np.uint8)
    d[:3] = 1
    with pytest.raises(InputError, match="not all 16 nodes are connected"):
        export.mesh(d, 2, 2)


def test_svg_is_to_scale_with_one_line_per_beam_and_colours_by_value():
    design = sample_designs(3.0, 1, seed=2)[0]
    nodes, beams = tiling_geometry(design, 4, 2)
    values = np.linspace(0, 1, len(beams))
    root = ET.fromstring(export.svg(design, 4, 2, values, title="t"))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("width") == f"{CELL_SIZE * 4 + THICKNESS:g}mm"
    assert root.get("height") == f"{CELL_SIZE * 2 + THICKNESS:g}mm"
    lines = root.findall(f".//{ns}line")
    assert len(lines) == len(beams)
    x = np.array([[float(ln.get("x1")), float(ln.get("x2"))] for ln in lines])
    y = np.array([[float(ln.get("y1")), float(ln.get("y2"))] for ln in lines])
    assert x.min() == 0 and x.max() == CELL_SIZE * 4 and y.min() == 0 and y.max() == CELL_SIZE * 2
    # lengths preserved (y flip only)
    got = np.sort(np.hypot(np.diff(x, axis=1), np.diff(y, axis=1)).ravel())
    want = np.sort(np.linalg.norm(nodes[beams[:, 0]] - nodes[beams[:, 1]], axis=1))
    np.testing.assert_allclose(got, want, atol=1e-9)
    colours = {ln.get("stroke") for ln in lines}
    assert len(colours) > 5
    with pytest.raises(ValueError, match="one per beam"):
        export.svg(design, 4, 2, values[:-1])
