"""DVC stage `evaluate`: see deepdram.stages.evaluate."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("evaluate"))
