"""Datasets in general: tables, the one atomic writer, Dask shards, splits, resampling, Great Expectations validation."""
