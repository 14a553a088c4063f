"""GIDN stiff/soft composite with an edge crack: the toughness FE oracle (SPEC section 8)."""
