"""DVC stage `train_forward`: see deepdram.stages.train_forward."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("train_forward"))
