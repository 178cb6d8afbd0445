"""Deploy a trained SSN (or hardened SN) model as plain PyTorch modules.

Every SSN layer whose ratios have frozen to one-hot becomes the normaliser
it selected (BN folded into the preceding conv or an eval BatchNorm; IN, LN
and mixed choices a small exact module).  OUT holds data only (the state
dict and the list of replacements, readable with weights_only=True); load it
with ssn_norm.apis.load_deployed(CONFIG, OUT), which rebuilds the model
from the config.
"""
import argparse
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction

from ssn_norm.apis import deploy_checkpoint, deployment_summary
from ssn_norm.deploy import HARDEN_CHOICES


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config', help='the model config')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('out', help='file for the deployed model')
    parser.add_argument(
        '--harden',
        choices=HARDEN_CHOICES,
        default='none',
        help='also replace SN layers ("sn") or every layer ("all") by the '
        'argmax of its ratios; this changes the outputs')
    parser.add_argument(
        '--no-fold',
        action='store_true',
        help='keep BN choices as BatchNorm instead of folding them into the '
        'preceding conv')
    parser.add_argument(
        '--spatial-dims',
        type=int,
        choices=[1, 2, 3],
        default=2,
        help='input dims after (N, C) of unfolded BN choices: 2 for images '
        '(BatchNorm2d), 3 for video (BatchNorm3d)')
    parser.add_argument(
        '--check-shape',
        type=int,
        nargs='+',
        help='check on a random input of this shape (e.g. 1 3 224 224) that '
        'the features do not change')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Deploys as ``argv`` (default: the command line) asks and prints what
    was replaced; returns 0 once ``out`` is written."""
    args = parse_args(argv)
    deployed, check = deploy_checkpoint(
        args.config,
        args.checkpoint,
        args.out,
        harden=args.harden,
        fold=not args.no_fold,
        spatial_dims=args.spatial_dims,
        check_shape=args.check_shape,
        cfg_options=args.cfg_options)
    print(deployment_summary(deployed))
    if check is not None:
        print(check.describe())
    options = (f', cfg_options={dict(args.cfg_options)!r}'
               if args.cfg_options else '')
    print(f'wrote {args.out}; load with ssn_norm.apis.load_deployed('
          f'{args.config!r}, {args.out!r}{options})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
