"""Inverse design: requests, objectives, the shared pipeline every method feeds, methods, the head-to-head."""
