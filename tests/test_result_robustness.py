"""Results that are not numbers, or not whole, are flagged and not trusted.

* ``tools/gather_results.py``: a NaN or infinite metric is warned about
  (naming the run and the metric) and shown as ``nan``, never as a number.
* ``tools/run_suite.py``: a run whose ``suite_result.json`` is truncated or
  incomplete is not done: it is warned about and run again.
"""
import json
import os.path as osp
import subprocess
import sys
import warnings

import pytest
from _helpers import run_tool

from ssn_norm import suite
from ssn_norm.analysis import ResultWarning, find_runs
from ssn_norm.apis.train_test import RESULT_FILE

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SN = 'deeplabv3_r18-d8-sn_mini_tiny-cityscapes'
SSN = 'deeplabv3_r18-d8-ssn_mini_tiny-cityscapes'
STAMP = '20240101_000000'


def _test_result(root, run, text):
    folder = root / run / STAMP
    folder.mkdir(parents=True)
    (folder / f'{STAMP}.json').write_text(text)


@pytest.fixture
def non_finite_runs(tmp_path):
    # json.dump writes NaN and Infinity as these bare words.
    _test_result(tmp_path, SN,
                 '{"aAcc": Infinity, "mIoU": 40.0, "mAcc": -Infinity}')
    _test_result(tmp_path, SSN, '{"aAcc": 90.0, "mIoU": NaN, "mAcc": 50.0}')
    return tmp_path


def test_non_finite_metrics_are_warned_about_and_nan(non_finite_runs):
    with pytest.warns(ResultWarning) as caught:
        runs = {run.name: run for run in find_runs([str(non_finite_runs)])}
    messages = [str(w.message) for w in caught]
    for run, metric, value in ((SN, 'aAcc', 'inf'), (SN, 'mAcc', '-inf'),
                               (SSN, 'mIoU', 'nan')):
        expected = (f'{osp.join(str(non_finite_runs), run)}: test {STAMP}: '
                    f'{metric} is {value}, not a finite number (a diverged '
                    'run?); shown as nan')
        assert expected in messages, messages
    sn = runs[SN].evaluation.metrics
    assert sn['mIoU'] == 40.0
    assert all(sn[k] != sn[k] for k in ('aAcc', 'mAcc'))  # NaN
    assert runs[SSN].evaluation.metrics['aAcc'] == 90.0


def test_gather_results_shows_nan_and_names_the_run(non_finite_runs):
    proc = subprocess.run(
        [sys.executable, 'tools/gather_results.py',
         str(non_finite_runs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():  # main table (mIoU), details
        cells = [c.strip() for c in line.split('|')[1:-1]]
        if cells and cells[0] in ('SN', 'SSN'):
            rows.setdefault(
                cells[0],
                []).extend(cells[1:2] if cells[0] not in rows else cells[1:3])
    # Columns mIoU, aAcc, mAcc.
    assert rows == {
        'SN': ['40.0', 'nan', 'nan'],
        'SSN': ['nan', '90.0', '50.0']
    }
    assert 'inf' not in proc.stdout
    assert (f'warning: {osp.join(str(non_finite_runs), SSN)}: test {STAMP}: '
            'mIoU is nan, not a finite number') in proc.stderr


def test_json_leaderboard_is_strict_json_with_null_for_nan(
        non_finite_runs, tmp_path):
    out = tmp_path / 'board.json'
    assert run_tool('gather_results', non_finite_runs, '--out', out) == 0

    def refuse(constant):
        raise AssertionError(f'{constant} is not JSON')

    board = json.loads(out.read_text(), parse_constant=refuse)
    values = {row['label']: row['metrics'] for row in board['rows']}
    assert values['SSN']['mIoU'] is None and values['SSN']['aAcc'] == 90.0
    assert values['SN']['aAcc'] is None and values['SN']['mIoU'] == 40.0


def _suite_runs():
    return suite.select_runs('smoke', ['seg'], ['sn', 'ssn'])


@pytest.mark.parametrize(
    'content, problem',
    [('{"config": "x.py", "metrics": {"mIoU": 4', 'unreadable'),
     ('{"metrics": {}}', 'incomplete: needs "config"'),
     ('{"config": "x.py", "metrics": 3}', 'incomplete'),
     ('[1, 2]', 'not a JSON object but list'), ('', 'unreadable')])
def test_broken_suite_result_is_not_done(tmp_path, content, problem):
    (tmp_path / RESULT_FILE).write_text(content)
    with pytest.warns(
            ResultWarning,
            match=rf'{RESULT_FILE}: {problem}.*; the run is not done and '
            'will be run again'):
        assert suite.read_suite_result(str(tmp_path)) is None
    assert suite.read_suite_result(str(tmp_path / 'absent')) is None
    (tmp_path / RESULT_FILE).write_text('{"config": "x.py", "metrics": {}}')
    assert suite.read_suite_result(str(tmp_path)) == dict(
        config='x.py', metrics={})


def test_suite_reruns_a_run_with_a_truncated_result(tmp_path, monkeypatch):
    """The SN run is done; the SSN run was killed while its result was
    written: only the SSN run runs again."""
    sn, ssn = _suite_runs()
    suite_dir = tmp_path / 'work_dirs' / 'suite-smoke'
    for run, text in ((sn, json.dumps(dict(config=sn.config, metrics={}))),
                      (ssn, '{"config": "')):
        (suite_dir / run.name).mkdir(parents=True)
        (suite_dir / run.name / RESULT_FILE).write_text(text)
    executed = []

    def execute_run(run, work_dir, *args):
        executed.append(run.name)
        record = dict(config=run.config, metrics={'mIoU': 1.0})
        with open(osp.join(work_dir, RESULT_FILE), 'w') as f:
            json.dump(record, f)
        return dict(record, status='done', seconds=0.0)

    monkeypatch.setattr(suite, 'execute_run', execute_run)
    monkeypatch.setattr(suite, 'prepare_data', lambda *args: None)
    monkeypatch.setattr(suite, 'plot_run_ratios', lambda *args: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        failed = suite.run_suite('smoke', ['seg'], ['sn', 'ssn'],
                                 str(tmp_path))
    assert failed == 0
    assert executed == [ssn.name]
    path = suite_dir / ssn.name / RESULT_FILE
    assert any(
        w.category is ResultWarning
        and str(w.message).startswith(f'{path}: unreadable (') and str(
            w.message).endswith('; the run is not done and will be run again')
        for w in caught), [str(w.message) for w in caught]
