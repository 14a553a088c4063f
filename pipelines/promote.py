"""DVC stage `promote`: see deepdram.jobs.promote."""

from deepdram.jobs.promote import main

if __name__ == "__main__":
    raise SystemExit(main())
