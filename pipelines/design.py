"""DVC stage `design`: see deepdram.stages.design."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("design"))
