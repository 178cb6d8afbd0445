"""The leaderboard says which BN statistics each SN result used.

``BatchStatsHook`` logs ``batch_stats_samples`` beside every validation and
test metric (the samples the batch averages came from; 0 for moving
averages): the leaderboard turns it into words in the evaluation column,
the JSON records and a note.
"""
import json

from ssn_norm.analysis import gather, render_json, render_markdown


def _test(run, timestamp, metrics):
    folder = run / timestamp
    folder.mkdir(parents=True)
    (folder / f'{timestamp}.json').write_text(json.dumps(metrics))


def _val(run, timestamp, entries):
    folder = run / timestamp / 'vis_data'
    folder.mkdir(parents=True)
    (folder / 'scalars.json').write_text('\n'.join(map(json.dumps, entries)))


def test_each_evaluation_names_its_statistics(tmp_path):
    root = tmp_path / 'work_dirs'
    _test(root / 'seg-sn-batch', '20240101_000000',
          dict(mIoU=70.0, batch_stats_samples=3200.0))
    _test(root / 'seg-sn-moving', '20240101_000000',
          dict(mIoU=69.0, batch_stats_samples=0.0))
    _test(root / 'seg-bn', '20240101_000000', dict(mIoU=68.0))
    # Validation entries too: the final one after training ended.
    _val(root / 'seg-sn-val', '20240101_000000', [
        dict(mIoU=60.0, batch_stats_samples=0.0, step=2),
        dict(mIoU=61.0, batch_stats_samples=8.0, step=4)
    ])
    board = gather([str(root)])
    texts = {
        row.label: row.evaluation_text()
        for table in board.tables
        for row in table.rows
    }
    assert texts == {
        'seg-bn':
        'test 20240101_000000',
        'seg-sn-batch':
        'test 20240101_000000, batch-average statistics '
        '(3200 samples)',
        'seg-sn-moving':
        'test 20240101_000000, moving-average statistics',
        'seg-sn-val':
        'val step 4 (20240101_000000) (latest of 2), '
        'batch-average statistics (8 samples)',
    }
    records = {
        r['label']: [e['statistics'] for e in r['evaluations']]
        for r in json.loads(render_json(board))['rows']
    }
    assert records == {
        'seg-bn': [None],
        'seg-sn-batch': ['batch-average statistics (3200 samples)'],
        'seg-sn-moving': ['moving-average statistics'],
        'seg-sn-val': ['batch-average statistics (8 samples)'],
    }
    assert ('Evaluation: which BN statistics the SN layers used'
            in render_markdown(board))


def test_no_note_without_statistics(tmp_path):
    _test(tmp_path / 'seg-bn', '20240101_000000', dict(mIoU=68.0))
    assert 'BN statistics' not in render_markdown(gather([str(tmp_path)]))
