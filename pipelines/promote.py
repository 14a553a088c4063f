"""DVC stage `promote`: see deepdram.stages.promote."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("promote"))
