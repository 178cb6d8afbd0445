"""tools/gather_results.py on fabricated mmengine work directories."""
import csv
import io
import json
import re

import pytest
from _helpers import run_tool

from ssn_norm.analysis import (DETECTION, SEGMENTATION, VIDEO, ResultWarning,
                               find_runs, gather, load_model_entries,
                               recognise_task)
from ssn_norm.analysis.leaderboard import MAX_MAIN_COLUMNS

MASK_SN = 'mask-rcnn_r50-sn_fpn_sn-head_2x_coco'
DEEPLAB_SN = 'deeplabv3_r50b-d8-sn-8x32_8xb2-40k_cityscapes-713x713'
PSP_SN = 'pspnet_r50b-d8-sn_8xb2-40k_cityscapes-713x713'
PSP_SN_MS = PSP_SN + '_ms-flip-test'  # the old, name-marked style
FASTER_SN_2X = 'faster-rcnn_r50-sn_fpn_sn-head_2x_coco'
I3D_SN = 'i3d_r50-sn_8xb8-32x2x1-100e_kinetics400-rgb'
MINI_SN = 'mask-rcnn_r50-sn_fpn_sn-head_mini'
MINI_SSN = 'mask-rcnn_r50-ssn_fpn_ssn-head_mini'
MINI_BN = 'mask-rcnn_r18_fpn_mini_tiny-coco'  # frozen-BN baseline
MINI_SEG = 'deeplabv3_r18-sn_1xb4-200_tiny-cityscapes'
TITLE = ('Switchable Normalization for Learning-to-Normalize Deep '
         'Representation')
RELEASED = ('switchablenorms/SwitchNorm_Detection (released '
            're-implementation, not the paper)')
RELEASED_URL = 'https://github.com/switchablenorms/SwitchNorm_Detection'


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _test_result(run, timestamp, metrics, tta=None):
    _write(run / timestamp / f'{timestamp}.json', json.dumps(metrics))
    if tta is not None:  # as tools/test.py writes it
        _write(run / timestamp / 'run_info.json', json.dumps(dict(tta=tta)))


def _scalars(run, timestamp, lines):
    _write(run / timestamp / 'vis_data' / 'scalars.json',
           '\n'.join(lines) + '\n')


def _train_line(step):
    return json.dumps(dict(lr=0.02, loss=1.5, iter=step, step=step))


def _val_line(step, metrics):
    return json.dumps(dict(metrics, step=step))


def _det(box, mask=None):
    offsets = dict(_50=.2, _75=.05, _s=-.1, _m=.01, _l=.1)
    metrics = {'coco/bbox_mAP': box, 'data_time': .01, 'time': .2}
    for suffix, offset in offsets.items():
        metrics[f'coco/bbox_mAP{suffix}'] = box + offset
    if mask is not None:
        metrics.update({
            'coco/segm_mAP': mask,
            'coco/segm_mAP_50': mask + .2,
            'coco/segm_mAP_75': mask + .03
        })
    return metrics


def _seg(miou, aacc, macc):
    return dict(aAcc=aacc, mIoU=miou, mAcc=macc)


@pytest.fixture
def work_dirs(tmp_path):
    """Both layouts, several evaluations, and broken runs."""
    root = tmp_path / 'work_dirs'
    # Detection: validation during training, then tested twice.
    run = root / MASK_SN
    _scalars(run, '20240101_000000', [
        _train_line(50),
        _val_line(50, _det(0.30, 0.28)),
        _train_line(100),
    ])
    _test_result(run, '20240102_000000', _det(0.40, 0.35))
    _test_result(run, '20240103_000000', _det(0.4123, 0.3661))
    # Segmentation, validation layout only; the last line was cut off.
    run = root / 'seg' / DEEPLAB_SN
    _scalars(run, '20240101_000000', [
        _train_line(10),
        _val_line(10, _seg(60.0, 90.0, 70.0)),
        _train_line(20),
        _val_line(20, _seg(72.34, 95.5, 80.2)),
        '{"loss": 1.0, "st',
    ])
    # Its multi-scale test (tools/test.py --tta) in the same work
    # directory: joins the same row, known from its run info.
    _test_result(
        root / 'seg' / DEEPLAB_SN,
        '20240104_000000',
        _seg(75.01, 96.0, 81.0),
        tta=True)
    # An old-style name-marked multi-scale run, and its single-scale test
    # (whose run info says so).
    _test_result(
        root / 'seg' / PSP_SN,
        '20240104_000000',
        _seg(77.0, 96.0, 84.0),
        tta=False)
    _test_result(root / 'seg' / PSP_SN_MS, '20240104_000000',
                 _seg(77.5, 96.2, 84.1))
    # Detection with only a labelled non-paper reference.
    _test_result(root / FASTER_SN_2X, '20240104_000000', _det(0.391))
    # Video: fractions, tested.
    video = {'acc/top1': 0.7361, 'acc/top5': 0.9104, 'acc/mean1': 0.7}
    _test_result(root / I3D_SN, '20240105_000000', video)
    # Mini suite, both layouts; paper references in the metafile.
    _scalars(root / 'mini' / MINI_SN, '20240106_000000',
             [_val_line(8, _det(0.12))])
    _scalars(root / 'mini' / MINI_SSN, '20240106_000000',
             [_val_line(8, _det(0.004))])
    _test_result(root / 'mini' / MINI_BN, '20240107_000000', _det(0.05))
    _test_result(root / 'mini' / MINI_SEG, '20240107_000000',
                 _seg(40.0, 80.0, 50.0))
    # Broken runs.
    _write(root / 'bad_json' / '20240101_000000' / '20240101_000000.json',
           '{"coco/bbox_mAP": 0.3')
    _write(root / 'bad_list' / '20240101_000000' / '20240101_000000.json',
           '[0.3]')
    _test_result(root / 'unknown_metric', '20240101_000000',
                 {'pascal_voc/mAP': 0.5})
    (root / 'no_results' / '20240101_000000').mkdir(parents=True)
    _write(root / 'no_results' / '20240101_000000' / '20240101_000000.log',
           'training crashed')
    _test_result(root / 'bad_info', '20240101_000000', _seg(1., 2., 3.))
    _write(root / 'bad_info' / '20240101_000000' / 'run_info.json',
           '{"tta": "yes"}')
    return root


@pytest.fixture
def metafiles(tmp_path):
    _write(
        tmp_path / 'configs' / 'mask_rcnn' / 'metafile.yml', f"""
Collections:
  - Name: Mask R-CNN SN
Models:
  - Name: {MASK_SN}
    In Collection: Mask R-CNN SN
    Config: configs/mask_rcnn/{MASK_SN}.py
    Metadata: {{Training Data: COCO, Batch Size: 16, Epochs: 24}}
    Results: []
    Paper:
      Title: '{TITLE}'
      Table: 'VI'
      Setting: 'SN+SN'
      Metrics: {{box AP: 41.0, mask AP: 36.5, AP50: n/a, box mAP: 41,
                 mask AP50: 58.2, mask AP75: 38.9}}
  - Name: {MINI_SN}
    Metadata: {{Normalization: SN}}
    Paper Reference: {MASK_SN}
  - Name: mask-rcnn_r50-ssn_fpn_ssn-head_mini
    Paper Reference: mask-rcnn_r50-ssn_fpn_ssn-head_2x_coco
  - Name: mask-rcnn_r50_fpn_2x_coco
    Paper:
      Title: '{TITLE}'
      Table: 'VI'
      Setting: 'BN†'
      Metrics: {{box AP: 38.6, mask AP: 34.2}}
  - Name: {MINI_BN}
    Paper Reference: mask-rcnn_r50_fpn_2x_coco
  - Name: {FASTER_SN_2X}
    Reference:
      Title: '{RELEASED}'
      URL: {RELEASED_URL}
      Setting: 'Faster R-CNN R-50-FPN SN(8,2) 2x'
      Metrics: {{box AP: 39.10}}
""")
    _write(
        tmp_path / 'configs' / 'deeplabv3' / 'metafile.yml', f"""
Models:
  - Name: {DEEPLAB_SN}
    Paper:
      Title: '{TITLE}'
      Table: 'VII'
      Setting: 'SN(8,32)'
      Split: test
      Metrics: {{mIoU: 72.2, mIoU(ms): 75.8}}
  - Name: {PSP_SN}
    Paper:
      Title: '{TITLE}'
      Table: 'VIII'
      Setting: 'SN(8,32)'
      Metrics: {{mIoU: 76.2, mIoU(ms+flip): 77.3}}
      Dataset: Cityscapes
  - Name: {I3D_SN}
    Paper:
      Title: '{TITLE}'
      Table: 'X'
      Setting: 'SN, batch 8'
      Metrics: {{Top 1 Accuracy: 73.5, Top 5 Accuracy: 91.2}}
""")
    _write(tmp_path / 'configs' / 'pspnet' / 'metafile.yml', 'Models: [oops')
    _write(
        tmp_path / 'model-index.yml', 'Import:\n'
        '  - configs/mask_rcnn/metafile.yml\n'
        '  - configs/deeplabv3/metafile.yml\n'
        '  - configs/pspnet/metafile.yml\n'
        '  - configs/i3d/metafile.yml\n')
    return str(tmp_path / 'model-index.yml')


def _gather(work_dirs, metafiles):
    with pytest.warns(ResultWarning) as record:
        board = gather(
            [str(work_dirs), str(work_dirs / 'nowhere')], [metafiles])
    return board, [str(w.message) for w in record]


def _rows(board, task, suite='full'):
    for table in board.tables:
        if table.task is task and table.suite == suite:
            return {row.label: row for row in table.rows}
    raise AssertionError(f'no {task.name}/{suite} table')


def test_tasks_are_recognised_by_metric_keys():
    assert recognise_task({'coco/segm_mAP': 0.1}) is DETECTION
    assert recognise_task({'mIoU': 50., 'aAcc': 90.}) is SEGMENTATION
    assert recognise_task({'acc/top1': .5, 'acc/top5': .9}) is VIDEO
    assert recognise_task({'aAcc': 90., 'loss': 1.}) is None


def test_every_broken_input_is_warned_about_and_skipped(work_dirs, metafiles):
    board, messages = _gather(work_dirs, metafiles)
    text = '\n'.join(messages)
    for expected in [
            r'bad_json/20240101_000000/20240101_000000\.json: unreadable '
            r'test result',
            r'bad_list/.*: expected one JSON object, got list',
            r'unknown_metric/.*: no known metric key \(found pascal_voc/mAP',
            r'no_results: no usable evaluation \(a test result',
            r'scalars\.json:5: malformed line',
            r'nowhere: no such directory',
            r'configs/i3d/metafile\.yml .*: no such file',
            r'configs/pspnet/metafile\.yml: unreadable',
            r"Paper\.Metrics\['AP50'\] = 'n/a' is not a number",
            r"Paper\.Metrics has unknown metric 'box mAP'; known: box AP, ",
            r'has Paper Reference mask-rcnn_r50-ssn_fpn_ssn-head_2x_coco, '
            r'which is not defined in any metafile',
            r'bad_info/20240101_000000/run_info\.json: run info must be a '
            r'JSON object with "tta": true or false, got '
            r"\{'tta': 'yes'\}; its test result is skipped",
            r"Paper\.Metrics has 'mIoU\(ms\+flip\)', which is now called "
            r"'mIoU\(ms\)'; rename it; ignored",
            r'Paper has unknown key\(s\) Dataset; known: Title, Table, '
            r'Setting, Split and Metrics; ignored',
    ]:
        assert re.search(expected, text), expected
    names = {
        run.name
        for table in board.tables
        for row in table.rows
        for run in row.runs
    }
    assert names == {
        MASK_SN, DEEPLAB_SN, PSP_SN, PSP_SN_MS, FASTER_SN_2X, I3D_SN, MINI_SN,
        MINI_SSN, MINI_BN, MINI_SEG
    }
    assert board.warnings == messages


def test_latest_test_result_wins_and_says_which(work_dirs):
    with pytest.warns(ResultWarning):
        found = find_runs([str(work_dirs)])
    runs = {run.name: run for run in found if not run.multi_scale}
    det = runs[MASK_SN]
    assert det.evaluation.kind == 'test'
    assert det.evaluation.timestamp == '20240103_000000'
    assert det.num_evaluations == 3
    assert det.describe() == 'test 20240103_000000 (latest of 3)'
    seg = runs[DEEPLAB_SN]  # never tested: the last validation entry
    assert seg.describe() == 'val step 20 (20240101_000000) (latest of 2)'
    assert seg.evaluation.metrics['mIoU'] == 72.34
    # Its --tta test is a run of its own, not "the latest test" of it.
    (tta, ) = [run for run in found if run.multi_scale]
    assert tta.name == DEEPLAB_SN and tta.num_evaluations == 1
    assert tta.describe() == 'test --tta 20240104_000000'
    assert tta.evaluation.metrics['mIoU'] == 75.01


def test_tables_in_paper_layout_with_paper_numbers(work_dirs, metafiles):
    board, _ = _gather(work_dirs, metafiles)
    det = _rows(board, DETECTION)[MASK_SN]
    assert det.values['box AP'] == pytest.approx(41.23)
    assert det.values['AP50'] == pytest.approx(61.23)
    assert det.values['mask AP'] == pytest.approx(36.61)
    assert det.values['mask AP75'] == pytest.approx(39.61)
    assert det.setting == 'SN+SN' and det.same_setting
    assert det.deltas == pytest.approx({
        'box AP': 0.23,
        'mask AP': 0.11,
        'mask AP50': -1.59,
        'mask AP75': 0.71
    })
    assert det.reference is None
    faster = _rows(board, DETECTION)[FASTER_SN_2X]
    assert faster.paper is None and faster.deltas == {}
    assert faster.reference.metrics == {'box AP': 39.1}
    assert faster.reference.url == RELEASED_URL
    seg = _rows(board, SEGMENTATION)[DEEPLAB_SN]
    assert [(run.name, run.multi_scale)
            for run in seg.runs] == [(DEEPLAB_SN, False), (DEEPLAB_SN, True)]
    assert seg.values == pytest.approx({
        'mIoU': 72.34,
        'aAcc': 95.5,
        'mAcc': 80.2,
        'mIoU(ms)': 75.01
    })
    # The paper's Cityscapes numbers are on the test split: no difference.
    assert seg.paper.split == 'test' and seg.same_setting
    assert seg.deltas == {}
    # An old name-marked multi-scale run still fills the column.
    psp = _rows(board, SEGMENTATION)[PSP_SN]
    assert [run.name for run in psp.runs] == [PSP_SN, PSP_SN_MS]
    assert psp.values['mIoU(ms)'] == 77.5
    assert psp.deltas == pytest.approx({'mIoU': 0.8})
    video = _rows(board, VIDEO)[I3D_SN]
    assert video.values['Top 1 Accuracy'] == pytest.approx(73.61)
    assert video.deltas == pytest.approx({
        'Top 1 Accuracy': 0.11,
        'Top 5 Accuracy': -0.16
    })

    md = board.to_markdown()
    # The main table: the papers' headline metrics beside the paper's own
    # row; the rest in the details table.
    assert ('| Config | Setting | box AP | paper | Δ | mask AP | paper | Δ |\n'
            in md)
    assert (f'| {MASK_SN} | SN+SN (Table VI) | 41.2 | 41.0 | +0.2 | 36.6 | '
            '36.5 | +0.1 |') in md
    assert ('| Config | AP50 | AP75 | APs | APm | APl | mask AP50 | paper | '
            'Δ | mask AP75 | paper | Δ | infer ms/img | Reference (not the '
            'paper) | Evaluation |') in md
    assert (f'| {MASK_SN} | 61.2 | 46.2 | 31.2 | 42.2 | 51.2 | 56.6 | 58.2 | '
            '-1.6 | 39.6 | 38.9 | +0.7 | 200.0 | — | '
            'test 20240103_000000 (latest of 3) |') in md
    # The reference is its own labelled column, never a paper number.
    assert f'| {FASTER_SN_2X} | SN+SN | 39.1 | — | — | — | — | — |' in md
    assert (f'| {FASTER_SN_2X} | 59.1 | 44.1 | 29.1 | 40.1 | 49.1 | — | — | '
            '— | — | — | — | 200.0 | box AP 39.1 (Faster R-CNN R-50-FPN '
            'SN(8,2) 2x) | test 20240104_000000 |') in md
    assert (f'Reference (not the paper): {RELEASED} <{RELEASED_URL}>.') in md
    # The paper's split is marked on each of its numbers and the setting.
    assert (f'| {DEEPLAB_SN} | SN(8,32) (Table VII, test split) | 72.3 | '
            '72.2 (test) | — | 75.0 | 75.8 (test) |') in md
    assert (f'| {DEEPLAB_SN} | 95.5 | 80.2 | ss: val step 20 '
            '(20240101_000000) (latest of 2); ms: test --tta '
            '20240104_000000 |') in md
    assert '(test): the paper\'s number is on that split' in md
    assert '| mIoU | paper | Δ | mIoU(ms) | paper |\n' in md


def test_mini_runs_are_rows_per_normaliser_with_marked_parent(
        work_dirs, metafiles):
    board, _ = _gather(work_dirs, metafiles)
    mini = _rows(board, DETECTION, 'mini')
    # Normaliser order; the baseline's name states none: its parent's
    # setting is its label.
    assert list(mini) == ['BN†', 'SN', 'SSN+SSN']  # SN: from Metadata
    assert mini['BN†'].paper.metrics['box AP'] == 38.6
    assert not mini['BN†'].same_setting
    assert list(_rows(board, SEGMENTATION, 'mini')) == ['SN']
    sn = mini['SN']
    assert sn.paper.metrics['box AP'] == 41.0
    assert not sn.same_setting and sn.paper_config == MASK_SN
    assert sn.deltas == {}
    assert mini['SSN+SSN'].paper is None
    md = board.to_markdown()
    assert '## Detection (COCO) — mini suite' in md
    mini_md = md.split('## Detection (COCO) — mini suite')[1].split('## ')[0]
    # No paper number beside a mini row: one line points to the parents'.
    assert '| Norm | box AP |\n' in mini_md and '| SN | 12.0 |' in mini_md
    assert 'paper' not in mini_md.split('\n\nPaper, ')[0]
    assert ('| SN | 32.0 | 17.0 | 2.0 | 13.0 | 22.0 | '
            'mask-rcnn_r50-sn_fpn_sn-head_mini | — | '
            'val step 8 (20240106_000000) |') in mini_md
    assert ('Paper, a different setting (not comparable, no difference '
            'computed): BN† → Table VI, BN† (mask-rcnn_r50_fpn_2x_coco): '
            'box AP 38.6, mask AP 34.2; SN → Table VI, SN+SN '
            f'({MASK_SN}): box AP 41.0, mask AP 36.5, mask AP50 58.2, '
            'mask AP75 38.9.') in mini_md
    # A small number is not rounded to a zero; COCO's -1 (no small
    # objects) is 'n/a'.
    assert '| SSN+SSN | 0.4 |' in mini_md
    assert '| SSN+SSN | 20.4 | 5.4 | n/a | 1.4 | 10.4 |' in mini_md
    assert mini['SSN+SSN'].values['APs'] is None
    assert 'n/a: COCO reports -1' in md


def test_layout_main_tables_narrow_papers_beside_own_rows_notes_once(
        work_dirs, metafiles):
    board, _ = _gather(work_dirs, metafiles)
    md = board.to_markdown()
    sections = md.split('\n## ')[1:]
    for section in sections[:-1]:  # the last one is the notes
        lines = section.split('\n')
        main_header = next(x for x in lines if x.startswith('| '))
        assert main_header.count(' | ') + 1 <= MAX_MAIN_COLUMNS, main_header
        if 'mini suite' in lines[0]:
            # Neither a paper column nor a '*'-marked paper number.
            tables = section.split('\n\nPaper, ')[0]
            assert 'paper' not in tables and '*' not in tables
    assert sections[-1].startswith('Notes')
    # Every note once, however many tables need it.
    for note in ('Paper numbers from the configs', 'Cost from the mmengine',
                 'Mini tables: one seed per row', 'n/a: COCO reports'):
        assert md.count(note) == 1, note
    paragraphs = [p for p in sections[-1].split('\n\n') if p.strip()]
    assert len(paragraphs) == len(set(paragraphs))


def test_tool_writes_markdown_csv_and_json(tmp_path, work_dirs, metafiles,
                                           capsys):
    for ext in ('md', 'csv', 'json'):
        out = tmp_path / 'out' / f'board.{ext}'
        assert _run_tool(work_dirs, '--metafiles', metafiles, '--out',
                         out) == 0
        assert out.is_file()
    captured = capsys.readouterr()
    assert f'| {MASK_SN} | SN+SN (Table VI) |' in captured.out
    assert 'warning: ' in captured.err and 'bad_list' in captured.err
    assert (tmp_path / 'out' / 'board.md').read_text() in captured.out

    rows = list(
        csv.DictReader(
            io.StringIO((tmp_path / 'out' / 'board.csv').read_text())))
    det = next(r for r in rows if r['configs'] == MASK_SN)
    assert float(det['box AP']) == pytest.approx(41.23)
    assert float(det['box AP paper']) == 41.0
    assert det['box AP delta'] == '0.23'  # rounded, no float noise
    assert det['mIoU'] == '' and det['paper row'] == 'Table VI, SN+SN'
    assert float(det['mask AP75 paper']) == 38.9
    faster = next(r for r in rows if r['configs'] == FASTER_SN_2X)
    assert float(faster['box AP reference']) == 39.1
    assert faster['box AP paper'] == '' and faster['paper row'] == ''
    assert faster['reference'] == (
        f'{RELEASED}: Faster R-CNN R-50-FPN SN(8,2) 2x')
    assert faster['reference url'] == RELEASED_URL
    seg = next(r for r in rows if r['label'] == DEEPLAB_SN)
    assert seg['paper split'] == 'test' and seg['mIoU delta'] == ''
    assert float(seg['mIoU(ms)']) == 75.01

    data = json.loads((tmp_path / 'out' / 'board.json').read_text())
    video = next(r for r in data['rows'] if r['task'] == 'video')
    assert video['metrics']['Top 5 Accuracy'] == pytest.approx(91.04)
    assert video['paper']['same_setting'] is True
    assert video['paper']['split'] is None and video['reference'] is None
    seg = next(r for r in data['rows'] if r['label'] == DEEPLAB_SN)
    assert seg['paper']['split'] == 'test'
    assert [e['multi_scale'] for e in seg['evaluations']] == [False, True]
    faster = next(r for r in data['rows'] if r['label'] == FASTER_SN_2X)
    assert faster['paper'] is None
    assert faster['reference'] == dict(
        title=RELEASED,
        url=RELEASED_URL,
        setting='Faster R-CNN R-50-FPN SN(8,2) 2x',
        metrics={'box AP': 39.1})
    assert video['evaluations'][0]['raw_metrics']['acc/top1'] == 0.7361
    assert any('bad_json' in w for w in data['warnings'])


def test_tool_fails_loudly_when_nothing_is_found(tmp_path, metafiles, capsys):
    (tmp_path / 'empty').mkdir()
    assert _run_tool(tmp_path / 'empty', '--metafiles', metafiles) == 1
    assert 'no run with a usable result' in capsys.readouterr().err
    assert _run_tool(tmp_path / 'empty', '--out', tmp_path / 'board.txt') == 1
    assert 'unknown format; use one of .md' in capsys.readouterr().err


def test_metafile_entries_and_duplicates(tmp_path, metafiles):
    duplicate = tmp_path / 'dup.yml'
    _write(duplicate, f'Models:\n  - Name: {MASK_SN}\n  - {{Config: x.py}}\n')
    with pytest.warns(ResultWarning) as record:
        entries = load_model_entries([metafiles, str(duplicate)])
    text = '\n'.join(str(w.message) for w in record)
    assert f'model {MASK_SN} is already defined' in text
    assert 'Models[1] has no Name' in text
    assert entries[MASK_SN].paper.metrics == {
        'box AP': 41.0,
        'mask AP': 36.5,
        'mask AP50': 58.2,
        'mask AP75': 38.9
    }
    assert entries[MASK_SN].paper.cite() == 'Table VI, SN+SN'


def _run_tool(*argv) -> int:
    return run_tool('gather_results', *argv)
