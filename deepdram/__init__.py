"""deepdram."""
