"""DVC stage `tune_forward`: see deepdram.stages.tune_forward."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("tune_forward"))
