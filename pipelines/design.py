"""DVC stage `design`: see deepdram.jobs.design."""

from deepdram.jobs.design import main

if __name__ == "__main__":
    raise SystemExit(main())
