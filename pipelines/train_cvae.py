"""DVC stage `train_cvae`: see deepdram.stages.train_cvae."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("train_cvae"))
