"""Test (evaluate) a checkpoint of an mmdet, mmseg or mmaction2 config."""
import argparse

import ssn_norm  # noqa: F401  registers the layers, applies compat fixes
from ssn_norm.apis import (add_common_args, apply_test_outputs, build_runner,
                           load_config, parse_tool_args)


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save the file with evaluation metrics')
    parser.add_argument(
        '--out', help='dump predictions to a pickle file (.pkl)')
    parser.add_argument(
        '--show-dir', help='directory where painted predictions are saved')
    add_common_args(parser)
    return parse_tool_args(parser)


def main():
    args = parse_args()
    cfg = load_config(args.config, args.cfg_options)
    apply_test_outputs(
        cfg,
        args.config,
        args.checkpoint,
        work_dir=args.work_dir,
        out=args.out,
        show_dir=args.show_dir,
        launcher=args.launcher)
    build_runner(cfg).test()


if __name__ == '__main__':
    main()
