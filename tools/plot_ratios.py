"""Plot IN/LN/BN ratios of SN/SSN checkpoints, or their training dynamics."""
import argparse
import os.path as osp
import sys
from typing import Optional, Sequence

from ssn_norm.analysis import (checkpoint_ratios, plot_layer_ratios,
                               plot_ratio_dynamics)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Per-layer normaliser ratios of one or two checkpoints '
        '(stacked bars), or their dynamics from a run\'s scalars.json')
    parser.add_argument(
        'checkpoints',
        nargs='*',
        metavar='CKPT',
        help='one or two checkpoints of SN/SSN models (side by side)')
    parser.add_argument(
        '--scalars',
        help='plot ratio dynamics from this scalars.json or run directory '
        '(logged by RatioLoggerHook) instead of checkpoints')
    parser.add_argument(
        '--groups',
        nargs='+',
        help='with --scalars: only these groups (e.g. all backbone.layer1)')
    parser.add_argument(
        '--labels',
        nargs='+',
        help='column titles for the checkpoints (default: file names)')
    parser.add_argument(
        '--out', required=True, help='image file to write, e.g. ratios.png')
    args = parser.parse_args(argv)
    if bool(args.checkpoints) == bool(args.scalars):
        parser.error('give one or two checkpoints, or --scalars, not both '
                     f'(got {len(args.checkpoints)} checkpoints, --scalars '
                     f'{args.scalars})')
    if len(args.checkpoints) > 2:
        parser.error('at most two checkpoints can be drawn side by side, got '
                     f'{len(args.checkpoints)}')
    if args.labels and len(args.labels) != len(args.checkpoints):
        parser.error(f'--labels needs {len(args.checkpoints)} names, got '
                     f'{len(args.labels)}')
    if args.groups and not args.scalars:
        parser.error('--groups only applies to --scalars')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Draws what ``argv`` (default: the command line) asks; returns 0, or
    1 with the reason on stderr when the input cannot be drawn."""
    args = parse_args(argv)
    try:
        if args.scalars:
            plot_ratio_dynamics(args.scalars, args.out, groups=args.groups)
        else:
            labels = args.labels or [
                osp.basename(path) for path in args.checkpoints
            ]
            plot_layer_ratios(
                [(label, checkpoint_ratios(path))
                 for label, path in zip(labels, args.checkpoints)], args.out)
    except (ValueError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(f'written to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
