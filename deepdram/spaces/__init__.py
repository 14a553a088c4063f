"""Design spaces behind `spaces.base.DesignSpace`, by name in `spaces.registry`: lattice, composite, peaks."""
