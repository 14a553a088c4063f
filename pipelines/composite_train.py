"""DVC stage `composite_train`: see deepdram.jobs.composite_train."""

from deepdram.jobs.composite_train import main

if __name__ == "__main__":
    raise SystemExit(main())
