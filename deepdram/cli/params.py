"""`deepdram params`: check params.yaml, see what an overrides file (params-paper.yaml) would rerun,
and run the pipeline with it as a DVC experiment."""

from __future__ import annotations

import argparse
import subprocess
import sys

from deepdram.cli.common import add_parser

DESCRIPTION = """\
Work with the pipeline's parameters.

  check [FILE]          check params.yaml (or FILE) against the typed schema: an
                        unknown or misspelt key, a wrong type or an out-of-range
                        value is reported with the key and section; exit 2. The
                        design methods' options are checked too (each stage
                        also checks its own before any work).
  plan OVERRIDES        the params sections an overrides file changes and the DVC
                        stages that would rerun (those reading a changed section,
                        and everything downstream of them).
  exp OVERRIDES         run the pipeline with the overrides applied, as a DVC
                        experiment: `dvc exp run -S key=value ...` with every leaf
                        of the file (checked first; --dry prints the command and
                        the plan and runs nothing). Compare with `dvc exp show`.
"""

EPILOG = """\
Examples:
  deepdram params check
  deepdram params plan params-paper.yaml
  deepdram params exp params-paper.yaml --dry
  deepdram params exp params-paper.yaml --name paper      # the paper-scale profile (a cluster job)
"""


def add(sub) -> None:
    p = add_parser(sub, "params", "check params.yaml; plan or run the pipeline with an overrides file "
                   "(params-paper.yaml)", DESCRIPTION, EPILOG)
    p.add_argument("action", choices=("check", "plan", "exp"), help="what to do (see above)")
    p.add_argument("file", nargs="?", metavar="FILE", help="params file (check) or overrides file (plan, exp)")
    p.add_argument("--dry", action="store_true", help="exp: print the command and the plan only")
    p.add_argument("--name", metavar="NAME", help="exp: experiment name (default: the overrides file's stem)")
    p.add_argument("-q", "--quiet", action="store_true", help="check: print nothing on success")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepdram import params as schema
    from deepdram.errors import InputError
    from deepdram.jobs.deps import rerun_plan
    from deepdram.paths import PARAMS_PATH, REPO_ROOT

    if args.action == "check":
        from deepdram.design.methods.registry import check_all_options

        path = Path(args.file) if args.file else PARAMS_PATH
        loaded = schema.load(path)
        # the method options, which the schema leaves to the stages (and their registry)
        check_all_options(loaded.compare_methods.methods, f"{path.name}: compare_methods.methods")
        check_all_options(loaded.composite_design.race.methods, f"{path.name}: composite_design.race.methods")
        if not args.quiet:
            print(f"{path}: all {len(schema.SECTIONS)} sections valid")
        return 0
    if not args.file:
        raise InputError(f"params {args.action}: name the overrides file, e.g. params-paper.yaml")
    overrides = Path(args.file)
    cmd = ["dvc", "exp", "run", "--name", args.name or overrides.stem, *schema.exp_run_args(PARAMS_PATH, overrides)]
    sections = schema.changed_sections(schema.read_yaml(PARAMS_PATH), schema.read_yaml(overrides))
    plan = rerun_plan(REPO_ROOT, sections)
    if args.action == "plan" or args.dry:
        print(f"sections changed: {', '.join(sections) or '(none)'}")
        print(f"stages that would rerun ({len(plan)}): {', '.join(plan) or '(none)'}")
        if args.action == "exp":
            print("command: " + " ".join(cmd[:5] + [f"'{a}'" if a != "-S" else a for a in cmd[5:]]))
        return 0
    return subprocess.call(cmd, cwd=REPO_ROOT, stdout=sys.stdout, stderr=sys.stderr)
