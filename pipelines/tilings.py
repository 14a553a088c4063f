"""DVC stage `tilings`: see deepdram.stages.tilings."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("tilings"))
