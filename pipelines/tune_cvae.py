"""DVC stage `tune_cvae`: see deepdram.jobs.tune_cvae."""

from deepdram.jobs.tune_cvae import main

if __name__ == "__main__":
    raise SystemExit(main())
