"""Print-ready exports of a design tiled d1 x d2: a to-scale SVG drawing and a watertight STL.

Geometry (SPEC sections 1, 2): beam centrelines between grid nodes 7.5 mm apart, beams
t = 1 mm wide, extruded T = 10 mm. Each beam is a t-wide rectangle ending flush at its two
nodes, and every node carries a t x t square, so joints are filled; the outline therefore spans
exactly (22.5 d1 + t) x (22.5 d2 + t) mm, from -t/2 to 22.5 d + t/2. The STL is the boolean
union of all those shapes (manifold3d: Clipper2 polygon union, then extrusion), so it is ONE
closed, consistently outward-oriented 2-manifold per connected part, with no internal faces: what
slicers need to open it without repairs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deepdram.spaces.lattice.constants import DEPTH, THICKNESS


def geometry(design: np.ndarray, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """(nodes (N, 2) in mm, beams (M, 2) node pairs) of a valid design tiled d1 x d2 (1 x 1: a cell)."""
    from deepdram.spaces.lattice.geometry import check_designs, tiling_geometry

    d = check_designs(np.asarray(design).reshape(1, -1))[0]
    return tiling_geometry(d, int(d1), int(d2))


def _used_nodes(nodes: np.ndarray, beams: np.ndarray) -> np.ndarray:
    return nodes[np.unique(beams)]


# --- SVG ---------------------------------------------------------------------------------------------


def _colours(values: np.ndarray, vmax: float | None, cmap: str) -> list[str]:
    import matplotlib

    v = np.asarray(values, float)
    top = float(vmax if vmax is not None else (v.max() if len(v) and v.max() > 0 else 1.0))
    rgba = matplotlib.colormaps[cmap](np.clip(v / top, 0, 1))
    return ["#%02x%02x%02x" % tuple(int(round(255 * c)) for c in row[:3]) for row in rgba]


def svg(design: np.ndarray, d1: int, d2: int, values: np.ndarray | None = None, *, vmax: float | None = None,
        cmap: str = "viridis", title: str | None = None) -> str:
    """SVG text of the tiling to scale (1 user unit = 1 mm; width/height in mm); beams coloured by
    `values` (one per beam of `geometry`, e.g. von Mises) when given, else black."""
    nodes, beams = geometry(design, d1, d2)
    t = THICKNESS
    x0, y0 = nodes.min(axis=0) - t / 2
    w, h = nodes.max(axis=0) - nodes.min(axis=0) + t
    top = y0 + h  # SVG's y axis points down: y_svg = top - y + y0
    if values is not None and len(values) != len(beams):
        raise ValueError(f"values: need one per beam ({len(beams)}); got {len(values)}")
    colours = _colours(values, vmax, cmap) if values is not None else ["#000000"] * len(beams)
    fy = lambda y: top - y + y0  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:g}mm" height="{h:g}mm" '
           f'viewBox="{x0:g} {y0:g} {w:g} {h:g}">']
    if title:
        out.append(f"<title>{title}</title>")
    out.append(f'<g stroke-width="{t:g}" stroke-linecap="butt" fill="none">')
    for (a, b), c in zip(beams, colours):
        (xa, ya), (xb, yb) = nodes[a], nodes[b]
        out.append(f'<line x1="{xa:g}" y1="{fy(ya):g}" x2="{xb:g}" y2="{fy(yb):g}" stroke="{c}"/>')
    out.append("</g>")
    out.append('<g fill="#000000">')
    for x, y in _used_nodes(nodes, beams):
        out.append(f'<rect x="{x - t / 2:g}" y="{fy(y) - t / 2:g}" width="{t:g}" height="{t:g}"/>')
    out.append("</g></svg>")
    return "\n".join(out) + "\n"


# --- STL ---------------------------------------------------------------------------------------------


def outline(design: np.ndarray, d1: int, d2: int):
    """The 2D shape (manifold3d CrossSection): union of beam rectangles and node squares."""
    from manifold3d import CrossSection, OpType

    nodes, beams = geometry(design, d1, d2)
    t = THICKNESS
    parts = []
    for a, b in beams:
        pa, pb = nodes[a], nodes[b]
        dx, dy = pb - pa
        length = math.hypot(dx, dy)
        rect = CrossSection.square((length, t), center=True).rotate(math.degrees(math.atan2(dy, dx)))
        parts.append(rect.translate(tuple((pa + pb) / 2)))
    for x, y in _used_nodes(nodes, beams):
        parts.append(CrossSection.square((t, t), center=True).translate((float(x), float(y))))
    return CrossSection.batch_boolean(parts, OpType.Add)


def mesh(design: np.ndarray, d1: int, d2: int, depth: float = DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64 mm, triangles (F, 3) int64) of the extruded lattice, outward-oriented."""
    from manifold3d import Manifold

    solid = Manifold.extrude(outline(design, d1, d2), float(depth))
    m = solid.to_mesh()
    return np.asarray(m.vert_properties, np.float64)[:, :3], np.asarray(m.tri_verts, np.int64)


STL_DTYPE = np.dtype([("normal", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])


def stl_bytes(vertices: np.ndarray, triangles: np.ndarray, name: str = "deepdram") -> bytes:
    """Binary STL of a triangle mesh (facet normals from the right-hand rule)."""
    tri = vertices[triangles]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    n = np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)
    rec = np.zeros(len(tri), STL_DTYPE)
    rec["normal"], rec["v"] = n, tri
    header = f"{name} binary STL, units mm".encode()[:80].ljust(80, b" ")
    return header + np.uint32(len(tri)).tobytes() + rec.tobytes()


def read_stl(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(triangle corners (F, 3, 3), stored normals (F, 3)) of a binary STL."""
    data = Path(path).read_bytes()
    n = int(np.frombuffer(data, "<u4", 1, 80)[0])
    rec = np.frombuffer(data, STL_DTYPE, n, 84)
    if len(data) != 84 + n * STL_DTYPE.itemsize:
        raise ValueError(f"{path}: size does not match {n} triangles")
    return rec["v"].astype(np.float64), rec["normal"].astype(np.float64)


def write_svg(path: str | Path, text: str) -> Path:
    """Write an SVG file atomically."""
    from deepdram.data.atomic import atomic_target

    with atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_print_files(stem: str | Path, design: np.ndarray, d1: int, d2: int) -> tuple[Path, Path]:
    """`stem`.svg (drawing to scale) and `stem`.stl (extruded mesh) of one design's d1 x d2 tiling."""
    stem = Path(stem)
    return (write_svg(stem.with_suffix(".svg"), svg(design, d1, d2, title=stem.name)),
            write_stl(stem.with_suffix(".stl"), design, d1, d2))


def write_stl(path: str | Path, design: np.ndarray, d1: int, d2: int, depth: float = DEPTH) -> Path:
    """Write the extruded lattice as a binary STL atomically."""
    from deepdram.data.atomic import atomic_target

    v, f = mesh(design, d1, d2, depth)
    with atomic_target(path) as tmp:
        tmp.write_bytes(stl_bytes(v, f, Path(path).stem))
    return Path(path)
