"""DVC stage `cells`: see deepdram.stages.cells."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("cells"))
