"""DVC stage `validate_tilings`: see deepdram.jobs.validate_tilings."""

from deepdram.jobs.validate_tilings import main

if __name__ == "__main__":
    raise SystemExit(main())
