"""Batch-average inference statistics for a trained SN / SSN checkpoint.

Feeds K training batches through the frozen model and writes the exact
average of every SN layer's batch moments into its running statistics (the
SN paper's evaluation setting).  Works under ``--launcher pytorch``.
"""
import argparse
from typing import Optional, Sequence

from ssn_norm.apis import (add_common_args, close_distributed, parse_tool_args,
                           update_checkpoint_batch_stats)
from ssn_norm.compat import exit_tool


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('config', help='the training config')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('out', help='checkpoint to write')
    parser.add_argument(
        '--num-batches',
        type=int,
        default=200,
        help='training batches per process (default 200)')
    parser.add_argument(
        '--mode',
        choices=['loss', 'tensor'],
        default='loss',
        help='forward mode; "loss" reproduces the training forward')
    parser.add_argument('--work-dir', help='where the runner writes logs')
    add_common_args(parser)
    return parse_tool_args(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs :func:`ssn_norm.apis.update_checkpoint_batch_stats` as ``argv``
    (default: the command line) asks; returns 0 once ``out`` is written."""
    args = parse_args(argv)
    update_checkpoint_batch_stats(
        args.config,
        args.checkpoint,
        args.out,
        num_batches=args.num_batches,
        mode=args.mode,
        cfg_options=args.cfg_options,
        launcher=args.launcher,
        work_dir=args.work_dir)
    close_distributed()
    return 0


if __name__ == '__main__':
    exit_tool(main())
