"""Swap every norm layer of a config's model for SN, SSN, SyncSN or SyncSSN.

Writes a short child config that inherits CONFIG (a file, or an upstream
config such as mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py), sets the
chosen norm in every model dict that builds a norm layer, unfreezes frozen
norms and adds the recipe (custom_imports, the optimiser rule for the ratio
logits, the hooks).  The child is built and checked before it is written:
it holds the chosen norm and no other norm layer, every one trainable.
Without --out the child is printed.
"""
import argparse
import sys
from typing import Optional, Sequence

from ssn_norm.apis import SWAP_NORMS, swap_norm


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument(
        'config', help='config file, or e.g. mmdet::<path in its configs>')
    parser.add_argument(
        '--norm', required=True, choices=list(SWAP_NORMS), help='the norm')
    parser.add_argument(
        '--out', help='the child config to write (default: print it)')
    parser.add_argument(
        '--keep-frozen-stages',
        action='store_true',
        help="keep the parent's frozen_stages (their norm layers stay "
        'frozen); by default every stage trains')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Swaps as ``argv`` (default: the command line) asks; returns 0 once
    the child is written (or printed)."""
    args = parse_args(argv)
    result = swap_norm(
        args.config,
        args.norm,
        out=args.out,
        keep_frozen_stages=args.keep_frozen_stages)
    if args.out is None:
        print(result.text, end='')
        return 0
    print(result.summary())
    print(f'wrote {args.out}; train it with: python tools/train.py '
          f'{args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
