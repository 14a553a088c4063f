"""DVC stage `data_report`: see deepdram.stages.data_report."""

from deepdram.stages import main

if __name__ == "__main__":
    raise SystemExit(main("data_report"))
