"""DVC stage `train_size_agnostic`: see deepdram.stages.train_size_agnostic."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("train_size_agnostic"))
