"""DVC stage `resample`: see deepdram.stages.resample."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("resample"))
