"""DVC stage `train_size_agnostic`: see deepdram.jobs.train_size_agnostic."""

from deepdram.jobs.train_size_agnostic import main

if __name__ == "__main__":
    raise SystemExit(main())
