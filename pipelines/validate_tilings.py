"""DVC stage `validate_tilings`: see deepdram.stages.validate_tilings."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("validate_tilings"))
