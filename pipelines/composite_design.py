"""DVC stage `composite_design`: see deepdram.jobs.composite_design."""

from deepdram.jobs.composite_design import main

if __name__ == "__main__":
    raise SystemExit(main())
