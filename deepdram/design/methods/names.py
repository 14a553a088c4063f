"""The names of the built-in design methods (imported by the typed params, which must not import the
methods' code: every stage reads params)."""

BUILT_IN = ("cvae", "backprop", "active", "ga", "topopt", "random")
