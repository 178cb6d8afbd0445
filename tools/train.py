"""Train an mmdet, mmseg or mmaction2 config (upstream command line)."""
import argparse
from typing import Optional, Sequence

import ssn_norm  # noqa: F401  registers the layers, applies compat fixes
from ssn_norm.apis import (add_common_args, apply_train_options, build_runner,
                           close_distributed, load_config, parse_tool_args)
from ssn_norm.compat import exit_tool


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true', help='enable mixed precision training')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or from the latest one in '
        'the work dir when no path is given')
    add_common_args(parser)
    return parse_tool_args(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Trains the config of ``argv`` (default: the command line); returns
    the exit status, 0 once training has finished."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    apply_train_options(
        cfg,
        args.config,
        work_dir=args.work_dir,
        resume=args.resume,
        amp=args.amp,
        launcher=args.launcher)
    build_runner(cfg, training=True).train()
    close_distributed()
    return 0


if __name__ == '__main__':
    exit_tool(main())
