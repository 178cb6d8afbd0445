"""Tabulate mmengine runs beside the papers' numbers (markdown/CSV/JSON)."""
import argparse
import os.path as osp
import sys
import warnings

from ssn_norm.analysis import FORMATS, ResultWarning, gather, write_leaderboard

DEFAULT_INDEX = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))), 'model-index.yml')


def parse_args():
    parser = argparse.ArgumentParser(
        description='Gather test/validation results of mmengine runs into '
        "tables in the papers' layouts, with the papers' numbers")
    parser.add_argument(
        'work_dirs',
        nargs='+',
        metavar='WORK_DIRS',
        help='run directories (work_dirs/<config>) or folders holding them')
    parser.add_argument(
        '--out',
        help=f'also write the tables to this file; format by extension '
        f'({", ".join(FORMATS)})')
    parser.add_argument(
        '--metafiles',
        nargs='+',
        default=[DEFAULT_INDEX],
        help='model-index.yml or metafile.yml files with the paper numbers '
        '(default: the repository model-index.yml)')
    return parser.parse_args()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f'warning: {message}', file=sys.stderr)


def main():
    args = parse_args()
    if args.out and osp.splitext(args.out)[1].lower() not in FORMATS:
        sys.exit(f'--out {args.out}: unknown format; use one of '
                 f'{", ".join(FORMATS)}')
    warnings.showwarning = _show_warning
    warnings.simplefilter('always', ResultWarning)
    board = gather(args.work_dirs, args.metafiles)
    print(board.to_markdown(), end='')
    if args.out:
        write_leaderboard(board, args.out)
        print(f'written to {args.out}', file=sys.stderr)
    if not board.tables:
        sys.exit('no run with a usable result found under '
                 f'{" ".join(args.work_dirs)}')


if __name__ == '__main__':
    main()
