"""DVC stage `train_forward`: see deepdram.jobs.train_forward."""

from deepdram.jobs.train_forward import main

if __name__ == "__main__":
    raise SystemExit(main())
