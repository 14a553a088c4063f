"""DVC stage `validate_cells`: see deepdram.jobs.validate_cells."""

from deepdram.jobs.validate_cells import main

if __name__ == "__main__":
    raise SystemExit(main())
