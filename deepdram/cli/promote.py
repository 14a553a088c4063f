"""`deepdram promote`: move a registered model's `champion` alias to a challenger that is at least as good."""

from __future__ import annotations

import argparse

from deepdram.cli.common import add_parser
from deepdram.mlops.catalogue import CHALLENGER, CHAMPION, DEFAULT_METRIC, GENERATOR

TEST_SET_TAG = "test_set"  # as mlops.tracking.TEST_SET_TAG (not imported: it would load mlflow)

DESCRIPTION = f"""\
Decide whether a registered model version becomes the served '{CHAMPION}'.

The candidate is --version N, else the version aliased '{CHALLENGER}' (set when a
training run registers its model). It is promoted when there is no champion yet,
or when both runs were evaluated on the same test split (the '{TEST_SET_TAG}' tag of
their runs) and the candidate's metric is at least the champion's minus
--tolerance. Otherwise the champion stays; --force promotes anyway (e.g. to roll
back to an older version). The decision and both metric sets are recorded as
tags 'promotion.*' on the candidate version, once: the same decision asked
again is not recorded again.

Promotions of one model take turns (a lock file next to the MLflow store): a
second `deepdram promote` started meanwhile waits, then decides on what the
first one left (typically: no challenger any more, exit code 2).
"""

EPILOG = """\
Examples:
  deepdram promote deepdram-forward
  deepdram promote deepdram-forward --version 3 --force
"""


def add(sub) -> None:
    p = add_parser(sub, "promote", "move the 'champion' alias of a registered model to a challenger that is at "
                   "least as good", DESCRIPTION, EPILOG)
    p.add_argument("model", metavar="MODEL", help="registered model name, e.g. deepdram-forward")
    p.add_argument("--version", type=int, default=None, metavar="N",
                   help=f"candidate version (default: the '{CHALLENGER}' alias)")
    p.add_argument("--force", action="store_true", help="promote even if the candidate is worse or not comparable")
    p.add_argument("--tolerance", type=float, default=0.0, metavar="T",
                   help="accept a candidate up to T worse than the champion (default 0)")
    p.add_argument("--metric", default=None,
                   help=f"metric to compare (default {DEFAULT_METRIC}; for {GENERATOR.name} {GENERATOR.metric})")
    p.add_argument("--lower-is-better", action="store_true", help="the metric is an error (lower is better)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Decide and apply; print the decision table. 0 unless an error."""
    from deepdram.mlops import registry
    from deepdram.mlops.catalogue import metric_of

    result = registry.promote(args.model, metric=args.metric or metric_of(args.model),
                              higher_is_better=not args.lower_is_better, tolerance=args.tolerance,
                              version=args.version, force=args.force)
    print(registry.format_decision(result))
    if not result.get("recorded", True) and result["decision"] != "unchanged":
        print(f"(the same decision is already recorded on version {result['candidate_version']}; not recorded again)")
    return 0
