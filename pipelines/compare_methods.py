"""DVC stage `compare_methods`: see deepdram.jobs.compare_methods."""

from deepdram.jobs.compare_methods import main

if __name__ == "__main__":
    raise SystemExit(main())
