"""DVC stage `evaluate`: see deepdram.jobs.evaluate."""

from deepdram.jobs.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
