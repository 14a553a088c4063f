"""DVC stage `composite_tune`: see deepdram.jobs.composite_tune."""

from deepdram.jobs.composite_tune import main

if __name__ == "__main__":
    raise SystemExit(main())
