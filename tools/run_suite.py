"""Run the benchmark suite: data, training, evaluation, leaderboard, ratio
plots.  ``--preset mini`` runs on bundled tiny data on one CPU machine."""
import argparse
import sys

from ssn_norm.suite import NORMS, PRESETS, TASKS, run_suite


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--preset', choices=PRESETS, default='mini')
    parser.add_argument(
        '--tasks', nargs='+', choices=TASKS, default=list(TASKS))
    parser.add_argument(
        '--norms', nargs='+', choices=NORMS, default=list(NORMS))
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
    return parser.parse_args()


def main():
    args = parse_args()
    failed = run_suite(args.preset, args.tasks, args.norms, args.root,
                       args.jobs, args.gpus)
    if failed:
        sys.exit(f'{failed} run(s) failed; see the logs named above')


if __name__ == '__main__':
    main()
