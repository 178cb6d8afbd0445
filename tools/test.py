"""Test (evaluate) a checkpoint of an mmdet, mmseg or mmaction2 config."""
import argparse
from typing import Optional, Sequence

import ssn_norm  # noqa: F401  registers the layers, applies compat fixes
from ssn_norm.apis import (add_common_args, apply_test_outputs, apply_tta,
                           build_runner, close_distributed, load_config,
                           parse_tool_args, write_run_info)
from ssn_norm.compat import exit_tool


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the file with evaluation metrics')
    parser.add_argument(
        '--out', help='dump predictions to a pickle file (.pkl)')
    parser.add_argument(
        '--show-dir', help='directory where painted predictions are saved')
    parser.add_argument(
        '--tta',
        action='store_true',
        help="test with the config's test-time augmentation (tta_model and "
        'tta_pipeline, e.g. multi-scale + flip); recorded in the run\'s '
        'run_info.json, so the leaderboard fills the multi-scale column')
    add_common_args(parser)
    return parse_tool_args(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Tests the checkpoint of ``argv`` (default: the command line); returns
    the exit status, 0 once the test has finished."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    if args.tta:
        apply_tta(cfg)
    apply_test_outputs(
        cfg,
        args.config,
        args.checkpoint,
        work_dir=args.work_dir,
        out=args.out,
        show_dir=args.show_dir,
        launcher=args.launcher)
    runner = build_runner(cfg)
    write_run_info(runner, args.tta, args.config, args.checkpoint)
    runner.test()
    close_distributed()
    return 0


if __name__ == '__main__':
    exit_tool(main())
