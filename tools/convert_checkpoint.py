"""Convert an ImageNet ResNet checkpoint for SN / SSN backbones.

Sources: the SN/SSN authors' released ResNet v1 checkpoints (the released
SSN ImageNet models are recognised by their MD5), and BN ResNets from
torchvision, mmpretrain or open-mmlab:// (see docs/checkpoints.md).  The
source is loaded without running code from it unless --trust-pickle is given.
"""
import argparse
import sys
from typing import Optional, Sequence

from ssn_norm.convert import (FILE_TARGETS, ConversionError,
                              convert_checkpoint_file)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('src', help='source checkpoint')
    parser.add_argument('dst', help='converted checkpoint to write')
    parser.add_argument(
        '--to',
        choices=FILE_TARGETS,
        help='target norm; default: the source\'s own (SN for BN sources). '
        '"i3d" inflates into the I3D backbone of --config')
    parser.add_argument(
        '--config',
        help='check that the result loads strictly into this config\'s '
        'backbone before writing (required with --to i3d)')
    parser.add_argument(
        '--groups',
        type=int,
        help='target group SN (num_groups=G in the config): copy each '
        'layer\'s ratio logits to every one of its G channel groups')
    parser.add_argument(
        '--normalizers',
        type=lambda text: tuple(text.split(',')),
        help='target an SN with these members, comma-separated (e.g. '
        'IN,LN,GN with gn_groups in the config): each takes the source\'s '
        'logit of its name and GN takes BN\'s; BN statistics are dropped '
        'when BN is not a member')
    parser.add_argument(
        '--trust-pickle',
        action='store_true',
        help='unpickle the source in full, which runs any code it holds '
        '(only for files you trust); without it, only tensors, containers, '
        'numbers, strings, numpy values and mmengine logger state load')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Converts as ``argv`` (default: the command line) asks; returns 0, or
    1 with the reason on stderr when the source cannot be converted."""
    args = parse_args(argv)
    try:
        summary = convert_checkpoint_file(args.src, args.dst, args.to,
                                          args.config, args.trust_pickle,
                                          args.groups, args.normalizers)
    except ConversionError as error:
        print(f'error: {error}\nnothing written.', file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == '__main__':
    sys.exit(main())
