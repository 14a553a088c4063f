"""DVC stage `peaks_demo`: see deepdram.jobs.peaks_demo."""

from deepdram.jobs.peaks_demo import main

if __name__ == "__main__":
    raise SystemExit(main())
