"""DVC stage `cells`: see deepdram.jobs.cells."""

from deepdram.jobs.cells import main

if __name__ == "__main__":
    raise SystemExit(main())
