"""deepdram: machine-learning inverse design of 3D-printed mechanical metamaterials."""
