"""DVC stage `resample`: see deepdram.jobs.resample."""

from deepdram.jobs.resample import main

if __name__ == "__main__":
    raise SystemExit(main())
