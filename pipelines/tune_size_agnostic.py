"""DVC stage `tune_size_agnostic`: see deepdram.jobs.tune_size_agnostic."""

from deepdram.jobs.tune_size_agnostic import main

if __name__ == "__main__":
    raise SystemExit(main())
