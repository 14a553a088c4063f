"""DVC stage `composite_data`: see deepdram.jobs.composite_data."""

from deepdram.jobs.composite_data import main

if __name__ == "__main__":
    raise SystemExit(main())
