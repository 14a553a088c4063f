"""DVC stage `composite_brute_force`: see deepdram.jobs.composite_brute_force."""

from deepdram.jobs.composite_brute_force import main

if __name__ == "__main__":
    raise SystemExit(main())
