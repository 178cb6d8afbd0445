"""Tabulate mmengine runs beside the papers' numbers (markdown/CSV/JSON), or
render the papers' tables of docs/model_zoo.md from the metafiles."""
import argparse
import os.path as osp
import sys
import warnings
from typing import List, Optional

from ssn_norm.analysis import (LEADERBOARD_FORMATS, ResultWarning, gather,
                               load_model_entries, write_leaderboard)
from ssn_norm.analysis.paper import render_paper_tables, replace_doc_section

DEFAULT_INDEX = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))), 'model-index.yml')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Gather test/validation results of mmengine runs into '
        "tables in the papers' layouts, with the papers' numbers")
    parser.add_argument(
        'work_dirs',
        nargs='*',
        metavar='WORK_DIRS',
        help='run directories (work_dirs/<config>) or folders holding them')
    parser.add_argument(
        '--out',
        help=f'also write the tables to this file; format by extension '
        f'({", ".join(LEADERBOARD_FORMATS)})')
    parser.add_argument(
        '--metafiles',
        nargs='+',
        default=[DEFAULT_INDEX],
        help='model-index.yml or metafile.yml files with the paper numbers '
        '(default: the repository model-index.yml)')
    parser.add_argument(
        '--paper-tables',
        nargs='?',
        const='-',
        metavar='DOC',
        help="instead of gathering runs, render the papers' tables from the "
        'metafiles: to stdout, or (with DOC, e.g. docs/model_zoo.md) into '
        "DOC's generated section, in place")
    args = parser.parse_args(argv)
    if args.paper_tables is None and not args.work_dirs:
        parser.error('give WORK_DIRS to gather, or --paper-tables')
    if args.paper_tables is not None and (args.work_dirs or args.out):
        parser.error('--paper-tables renders the metafiles only; it takes '
                     'no WORK_DIRS and no --out')
    return args


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f'warning: {message}', file=sys.stderr)


def paper_tables(metafiles: List[str], doc: str) -> int:
    """Print the rendered tables, or write them into ``doc``; 0, or 1 with
    the reason on stderr when ``doc`` has no single generated section."""
    section = render_paper_tables(load_model_entries(metafiles))
    if doc == '-':
        print(section, end='')
        return 0
    with open(doc, encoding='utf-8') as f:
        text = f.read()
    try:
        updated = replace_doc_section(text, section, doc)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    if updated == text:
        print(f'{doc} is up to date', file=sys.stderr)
        return 0
    with open(doc, 'w', encoding='utf-8', newline='') as f:
        f.write(updated)
    print(f'updated the paper tables in {doc}', file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Gather the runs (or render the paper tables); returns the exit
    status: 0, or 1 with the reason on stderr (an unknown ``--out``
    format, no usable run, no generated section in the doc)."""
    args = parse_args(argv)
    warnings.showwarning = _show_warning
    warnings.simplefilter('always', ResultWarning)
    if args.paper_tables is not None:
        return paper_tables(args.metafiles, args.paper_tables)
    ext = osp.splitext(args.out or '')[1].lower()
    if args.out and ext not in LEADERBOARD_FORMATS:
        print(
            f'--out {args.out}: unknown format; use one of '
            f'{", ".join(LEADERBOARD_FORMATS)}',
            file=sys.stderr)
        return 1
    board = gather(args.work_dirs, args.metafiles)
    print(board.to_markdown(), end='')
    if args.out:
        write_leaderboard(board, args.out)
        print(f'written to {args.out}', file=sys.stderr)
    if not board.tables:
        print(
            'no run with a usable result found under '
            f'{" ".join(args.work_dirs)}',
            file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
