"""Run the benchmark suite: data, training, evaluation, leaderboard, ratio
plots.  ``--preset mini`` runs on bundled tiny data on one CPU machine;
``--preset claims`` tests the SN paper's claims there (``claims.md``)."""
import argparse
import sys
from typing import List, Optional

from ssn_norm.claims import CLAIMS_PRESETS, run_claims
from ssn_norm.suite import PRESETS, SUITE_NORMS, SUITE_TASKS, run_suite


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        '--preset', choices=PRESETS + CLAIMS_PRESETS, default='mini')
    parser.add_argument(
        '--tasks', nargs='+', choices=SUITE_TASKS, default=list(SUITE_TASKS))
    parser.add_argument(
        '--norms', nargs='+', choices=SUITE_NORMS, default=list(SUITE_NORMS))
    parser.add_argument(
        '--root',
        default='.',
        help='where data/ and work_dirs/ live (default: current directory)')
    parser.add_argument(
        '--jobs',
        type=int,
        default=2,
        help='runs trained at once on CPU (mini/smoke presets)')
    parser.add_argument(
        '--gpus', type=int, default=8, help='GPUs per run (full preset)')
    parser.add_argument(
        '--seeds',
        type=int,
        help='run each config N times, with randomness.seed 0..N-1, in '
        '<config>/seed-<k>; the leaderboard shows mean ± standard deviation '
        '(default: each config once, with its own seed; the claims preset: '
        '3 seeds per cell)')
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error(f'--seeds must be at least 1, got {args.seeds}')
    if args.preset in CLAIMS_PRESETS and (args.tasks != list(SUITE_TASKS)
                                          or args.norms != list(SUITE_NORMS)):
        parser.error(f'the {args.preset} preset runs its own fixed matrix of '
                     'tasks and normalisers (ssn_norm.claims); drop '
                     '--tasks/--norms')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Run the suite; 0 when every run succeeded, else 1 (with a message
    on stderr)."""
    args = parse_args(argv)
    if args.preset in CLAIMS_PRESETS:
        failed = run_claims(args.preset, args.root, args.jobs, args.seeds)
    else:
        failed = run_suite(args.preset, args.tasks, args.norms, args.root,
                           args.jobs, args.gpus, args.seeds)
    if failed:
        print(
            f'{failed} run(s) failed; see the logs named above',
            file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
