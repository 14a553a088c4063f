"""DVC stage `tune_cvae`: see deepdram.stages.tune_cvae."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("tune_cvae"))
