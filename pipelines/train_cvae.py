"""DVC stage `train_cvae`: see deepdram.jobs.train_cvae."""

from deepdram.jobs.train_cvae import main

if __name__ == "__main__":
    raise SystemExit(main())
