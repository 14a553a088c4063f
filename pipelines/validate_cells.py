"""DVC stage `validate_cells`: see deepdram.stages.validate_cells."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("validate_cells"))
