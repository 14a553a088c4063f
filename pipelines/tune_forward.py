"""DVC stage `tune_forward`: see deepdram.jobs.tune_forward."""

from deepdram.jobs.tune_forward import main

if __name__ == "__main__":
    raise SystemExit(main())
