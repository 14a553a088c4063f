"""DVC stage `data_report`: see deepdram.jobs.data_report."""

from deepdram.jobs.data_report import main

if __name__ == "__main__":
    raise SystemExit(main())
