"""DVC stage `tilings`: see deepdram.jobs.tilings."""

from deepdram.jobs.tilings import main

if __name__ == "__main__":
    raise SystemExit(main())
