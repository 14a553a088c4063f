"""DVC stage `tune_size_agnostic`: see deepdram.stages.tune_size_agnostic."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("tune_size_agnostic"))
