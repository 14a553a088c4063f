"""The lattice space's constants: geometry, beam section and material, load, tilings, columns
(SPEC sections 1-4 and 7). Nothing outside `deepdram.spaces.lattice` needs these numbers."""

from __future__ import annotations

from dataclasses import dataclass

# --- Unit cell geometry (SPEC section 1) ---------------------------------------------------
N_GRID = 4  # nodes per side of a unit cell
N_NODES = N_GRID * N_GRID
SPACING = 7.5  # mm, node spacing dx = dy
CELL_SIZE = SPACING * (N_GRID - 1)  # mm, node span W = L of one cell (22.5)
N_BEAMS = 42
ZG_VALUES = (2.5, 3.0, 3.5, 4.0, 4.5)
# Measured acceptance rate of uniform random beam subsets, per Z_g (SPEC section 1).
ACCEPTANCE_RATES = {2.5: 0.331, 3.0: 0.650, 3.5: 0.856, 4.0: 0.956, 4.5: 0.993}

# --- Beam section and material (SPEC section 2) --------------------------------------------
THICKNESS = 1.0  # mm, in-plane beam width t
DEPTH = 10.0  # mm, out-of-plane thickness T
AREA = DEPTH * THICKNESS
INERTIA = DEPTH * THICKNESS**3 / 12.0
E_B = 0.6  # MPa
NU_B = 0.3
G_B = E_B / (2.0 * (1.0 + NU_B))
K_S = 0.85

# --- Loading (SPEC section 3) ---------------------------------------------------------------
STRAIN = 0.05


@dataclass(frozen=True)
class Material:
    """Beam section, material and applied strain of the frame model (SPEC sections 2, 3)."""

    thickness: float = THICKNESS  # mm, in-plane beam width t
    depth: float = DEPTH  # mm, out-of-plane thickness T
    e_b: float = E_B  # MPa
    nu_b: float = NU_B
    k_s: float = K_S  # shear correction
    strain: float = STRAIN

    @property
    def area(self) -> float:
        return self.depth * self.thickness

    @property
    def inertia(self) -> float:
        return self.depth * self.thickness**3 / 12.0

    @property
    def g_b(self) -> float:
        return self.e_b / (2.0 * (1.0 + self.nu_b))


SPEC_MATERIAL = Material()

# --- Tilings (SPEC section 4) ---------------------------------------------------------------
D_MIN, D_MAX = 2, 20
TILING_SIZES = tuple(range(D_MIN, D_MAX + 1, 2))
UNIT_CELL = 1  # d1 = d2 = 1 in a design request: a single unit cell

# --- Data conventions (SPEC section 7) -------------------------------------------------------
BIT_COLUMNS = tuple(f"b{k:02d}" for k in range(N_BEAMS))
PROPERTY_COLUMNS = ("E11", "E22", "nu12", "nu21")
SIZE_COLUMNS = ("d1", "d2")
STRESS_COLUMNS = ("vm1", "vm2")

# Physical bounds of FE properties: the validation suites enforce them and design targets must
# lie inside them.
E_RANGE = (0.0, 0.3)
NU_RANGE = (-3.0, 3.0)
PROPERTY_BOUNDS = {"E11": E_RANGE, "E22": E_RANGE, "nu12": NU_RANGE, "nu21": NU_RANGE}
