"""Seeds and cost in the leaderboard: runs of one config that differ only
in their seed share a row (mean ± sample standard deviation, n), and the
cost columns come from mmengine's logs, compared with the row's baseline.

The work directories are fabricated as mmengine 0.10.7 writes them:
``<run>/<timestamp>/vis_data/scalars.json`` (training windows with ``lr``,
``time`` and, on GPU, ``memory``; validation entries with the metrics) and
``<run>/<timestamp>/<timestamp>.json`` (the test metrics with the test
loop's ``data_time`` and ``time``).  The expected numbers are computed here
with numpy from the same inputs.
"""
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from _helpers import run_tool

from ssn_norm.analysis import DETECTION, gather
from ssn_norm.analysis.runs import Cost, read_cost, split_seed
from ssn_norm.suite import select_runs

SN = 'mask-rcnn_r50-sn_fpn_sn-head_2x_coco'
BN = 'mask-rcnn_r50_fpn_2x_coco'
TITLE = ('Switchable Normalization for Learning-to-Normalize Deep '
         'Representation')
# Per seed: box AP, mask AP (fractions, as mmdet reports them).
SN_AP = {0: (0.410, 0.361), 1: (0.414, 0.366), 2: (0.401, 0.359)}
BN_AP = {0: (0.386, 0.342), 1: (0.389, 0.345), 2: (0.383, 0.340)}
# Per seed: the training windows' seconds per iteration (the first window
# of a launch holds the start-up and is left out), peak MB, test s/image.
SN_COST = {
    0: ([2.0, 0.52, 0.50, 0.51], [3010., 3120., 3115.], 0.081),
    1: ([1.9, 0.53, 0.52, 0.50], [3005., 3130., 3125.], 0.079),
    2: ([2.1, 0.51, 0.49, 0.52], [3000., 3100., 3140.], 0.083),
}
BN_COST = {
    0: ([1.5, 0.45, 0.46, 0.44], [2800., 2850., 2860.], 0.070),
    1: ([1.6, 0.46, 0.45, 0.45], [2810., 2855., 2845.], 0.072),
    2: ([1.4, 0.44, 0.45, 0.46], [2790., 2840., 2865.], 0.071),
}
PAPER = {'box AP': 41.0, 'mask AP': 36.5}


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _train_line(step, seconds, memory):
    # The keys of an mmdet Mask R-CNN training window.
    return json.dumps(
        dict(
            lr=0.02,
            data_time=0.012,
            loss=1.31,
            loss_rpn_cls=0.07,
            loss_rpn_bbox=0.04,
            loss_cls=0.45,
            acc=91.2,
            loss_bbox=0.38,
            loss_mask=0.37,
            time=seconds,
            iter=step,
            memory=memory,
            step=step))


def _coco(box, mask):
    metrics = {}
    for prefix, value in (('bbox', box), ('segm', mask)):
        metrics.update({
            f'coco/{prefix}_mAP': value,
            f'coco/{prefix}_mAP_50': value + 0.2,
            f'coco/{prefix}_mAP_75': value + 0.04,
            f'coco/{prefix}_mAP_s': value - 0.15,
            f'coco/{prefix}_mAP_m': value + 0.02,
            f'coco/{prefix}_mAP_l': value + 0.12,
        })
    return metrics


def _seed_run(run, ap, cost):
    """A training launch (windows, one validation) and a test launch."""
    times, memory, test_time = cost
    lines = [
        _train_line(50 * (i + 1), t, m)
        for i, (t, m) in enumerate(zip(times, memory + [memory[-1]]))
    ]
    lines.insert(
        2, json.dumps(dict(_coco(*ap), data_time=0.01, time=0.3, step=100)))
    _write(run / '20241201_100000' / 'vis_data' / 'scalars.json',
           '\n'.join(lines) + '\n')
    test = dict(_coco(*ap), data_time=0.004, time=test_time)
    _write(run / '20241202_100000' / '20241202_100000.json', json.dumps(test))


@pytest.fixture
def seeded(tmp_path):
    """Three seeds of SN (``<config>/seed-<k>``) and of its BN† baseline
    (``<config>_seed<k>``), and a metafile with the paper's rows."""
    root = tmp_path / 'work_dirs'
    for seed in range(3):
        _seed_run(root / SN / f'seed-{seed}', SN_AP[seed], SN_COST[seed])
        _seed_run(root / f'{BN}_seed{seed}', BN_AP[seed], BN_COST[seed])
    metafile = tmp_path / 'metafile.yml'
    _write(
        metafile, f"""
Models:
  - Name: {SN}
    Metadata: {{Normalization: SN+SN}}
    Paper:
      Title: '{TITLE}'
      Table: 'VI'
      Setting: 'SN+SN'
      Metrics: {{box AP: 41.0, mask AP: 36.5}}
  - Name: {BN}
    Metadata: {{Normalization: BN†}}
    Paper:
      Title: '{TITLE}'
      Table: 'VI'
      Setting: 'BN†'
      Metrics: {{box AP: 38.6, mask AP: 34.2}}
""")
    return root, metafile


def _expected(aps, costs):
    """Means, sample standard deviations and costs computed with numpy."""
    box = np.array([aps[s][0] for s in range(3)]) * 100
    mask = np.array([aps[s][1] for s in range(3)]) * 100
    train = np.mean([np.mean(costs[s][0][1:]) for s in range(3)])
    memory = np.mean([np.max(costs[s][1]) for s in range(3)]) / 1024
    infer = np.mean([costs[s][2] for s in range(3)]) * 1000
    return dict(
        box=(box.mean(), box.std(ddof=1)),
        mask=(mask.mean(), mask.std(ddof=1)),
        train=train,
        memory=memory,
        infer=infer)


def test_split_seed_names_config_and_seed():
    assert split_seed('work_dirs/cfg/seed-2') == ('cfg', 2)
    assert split_seed('work_dirs/cfg_seed12/') == ('cfg', 12)
    assert split_seed('work_dirs/cfg') == ('cfg', None)
    assert split_seed('work_dirs/seed-x') == ('seed-x', None)


def test_read_cost_skips_each_launchs_first_window(tmp_path):
    run = tmp_path / 'run'
    _seed_run(run, SN_AP[0], SN_COST[0])
    # A resumed launch: its first window is start-up again; a validation
    # entry whose metric no task knows has no lr either: not training.
    _write(
        run / '20241201_200000' / 'vis_data' / 'scalars.json', '\n'.join([
            _train_line(250, 3.0, 2000.),
            _train_line(300, 0.7, 3500.),
            json.dumps({
                'pascal_voc/mAP': 0.5,
                'time': 9.9,
                'step': 300
            })
        ]))
    cost = read_cost(str(run))
    windows = SN_COST[0][0][1:] + [0.7]
    assert cost.train_time == pytest.approx(np.mean(windows), rel=1e-12)
    assert cost.memory == 3500.
    assert cost.test_time is None  # no evaluation given: no test time
    # No time or memory logged (a CPU run logs no memory): None, not 0.
    bare = tmp_path / 'bare'
    _write(bare / '20241201_100000' / 'vis_data' / 'scalars.json',
           json.dumps(dict(lr=0.1, loss=1.0, iter=1, step=1)) + '\n')
    assert read_cost(str(bare)) == Cost()


def test_seeds_share_a_row_with_mean_sd_and_cost(seeded):
    root, metafile = seeded
    board = gather([str(root)], [str(metafile)])
    (table, ) = board.tables
    assert table.task is DETECTION
    rows = {row.label: row for row in table.rows}
    assert set(rows) == {SN, BN}
    sn, bn = rows[SN], rows[BN]
    assert sn.seeds == [0, 1, 2] and bn.seeds == [0, 1, 2]
    want = _expected(SN_AP, SN_COST)
    assert sn.values['box AP'] == pytest.approx(want['box'][0], abs=1e-9)
    assert sn.spread['box AP'] == pytest.approx(want['box'][1], abs=1e-9)
    assert sn.values['mask AP'] == pytest.approx(want['mask'][0], abs=1e-9)
    assert sn.spread['mask AP'] == pytest.approx(want['mask'][1], abs=1e-9)
    assert sn.count('box AP') == 3
    assert sn.deltas['box AP'] == pytest.approx(want['box'][0] - 41.0)
    assert sn.cost['train s/iter'] == pytest.approx(want['train'], rel=1e-12)
    assert sn.cost['infer ms/img'] == pytest.approx(want['infer'], rel=1e-12)
    assert sn.cost['memory GB'] == pytest.approx(want['memory'], rel=1e-12)
    assert sn.baseline is bn and bn.baseline is bn


def test_tool_prints_mean_sd_n_and_cost_columns(seeded, capsys):
    root, metafile = seeded
    assert run_tool('gather_results', root, '--metafiles', metafile) == 0
    out = capsys.readouterr().out
    sn, bn = _expected(SN_AP, SN_COST), _expected(BN_AP, BN_COST)
    assert '| mask AP | paper | Δ | vs baseline |' in out
    assert '| train s/iter | infer ms/img | memory GB | Evaluation |' in out
    # The row's main line, then its details line.
    line, details = [[cell.strip() for cell in row.strip('|').split('|')]
                     for row in out.splitlines() if row.startswith(f'| {SN}')]
    cells = line
    box = f'{sn["box"][0]:.1f} ± {sn["box"][1]:.1f} (n=3)'
    mask = f'{sn["mask"][0]:.1f} ± {sn["mask"][1]:.1f} (n=3)'
    assert box == '40.8 ± 0.7 (n=3)'  # the numbers chosen above
    delta = round(sn['box'][0], 1) - 41.0
    assert cells[2:5] == [box, '41.0', f'{delta:+.1f} ± {sn["box"][1]:.1f}']
    assert mask in cells
    train = sn['train'] / bn['train'] - 1
    infer = sn['infer'] / bn['infer'] - 1
    memory = sn['memory'] / bn['memory'] - 1
    ap = round(sn['box'][0], 1) - round(bn['box'][0], 1)
    assert cells[-1] == (
        f'{ap:+.1f} box AP, {100 * train:+.0f}% train time, '
        f'{100 * infer:+.0f}% inference time, {100 * memory:+.0f}% memory '
        'vs BN†')
    assert details[-4:-1] == [
        f'{sn["train"]:.3f}', f'{sn["infer"]:.1f}', f'{sn["memory"]:.2f}'
    ]
    assert 'seed 0: test 20241202_100000' in details[-1]
    bn_line = next(row for row in out.splitlines()
                   if row.startswith(f'| {BN} '))
    assert '| baseline |' in bn_line
    assert 'mean ± s (n=k): the mean over k seeds' in out


def test_csv_and_json_carry_spread_counts_seeds_and_cost(seeded, tmp_path):
    root, metafile = seeded
    board = gather([str(root)], [str(metafile)])
    want = _expected(SN_AP, SN_COST)
    records = {r['label']: r for r in json.loads(board.to_json())['rows']}
    sn = records[SN]
    assert sn['seeds'] == [0, 1, 2] and sn['counts']['box AP'] == 3
    assert sn['spread']['box AP'] == pytest.approx(want['box'][1], abs=1e-4)
    assert sn['cost']['train s/iter'] == pytest.approx(want['train'], abs=1e-4)
    assert sn['baseline'] == BN
    assert [e['seed'] for e in sn['evaluations']] == [0, 1, 2]
    lines = list(csv.DictReader(io.StringIO(board.to_csv())))
    line = next(x for x in lines if x['label'] == SN)
    assert float(line['box AP sd']) == pytest.approx(want['box'][1], abs=1e-4)
    assert line['box AP n'] == '3' and line['seeds'] == '0 1 2'
    assert float(line['memory GB']) == pytest.approx(want['memory'], abs=1e-4)


def test_an_unseeded_repeat_is_not_averaged(seeded):
    """Two runs of one config without seeds in their names are not known
    to differ only in seed: they keep rows of their own."""
    root, metafile = seeded
    other = root.parent / 'elsewhere' / SN
    _seed_run(other, SN_AP[0], SN_COST[0])
    _seed_run(root.parent / 'again' / SN, SN_AP[1], SN_COST[1])
    board = gather(
        [str(root.parent / 'elsewhere'),
         str(root.parent / 'again')], [str(metafile)])
    (table, ) = board.tables
    assert [len(row.runs) for row in table.rows] == [1, 1]
    assert all(not row.spread for row in table.rows)
    # Nor is an unseeded run averaged into the seeds' row, whichever comes
    # first (runs are taken in path order).
    _seed_run(root.parent / 'x_plain' / SN, SN_AP[2], SN_COST[2])
    board = gather([str(root), str(root.parent / 'x_plain')], [str(metafile)])
    (table, ) = board.tables
    assert sorted(row.seeds for row in table.rows
                  if row.label == SN) == [[], [0, 1, 2]]
    board = gather([str(root), str(root.parent / 'elsewhere')],
                   [str(metafile)])
    (table, ) = board.tables
    assert sorted(row.seeds for row in table.rows
                  if row.label == SN) == [[], [0, 1, 2]]


def test_one_seed_mini_table_says_so(tmp_path):
    run = tmp_path / 'mask-rcnn_r18-sn_fpn_sn-head_mini_tiny-coco'
    _seed_run(run, SN_AP[0], SN_COST[0])
    md = gather([str(run)]).to_markdown()
    assert 'one seed per row' in md and '--seeds N' in md
    assert '±' not in md.split('\n\n')[1]  # the table itself


def test_select_runs_with_seeds_sets_randomness_seed():
    runs = select_runs('mini', tasks=['det'], norms=['sn'], seeds=3)
    assert [r.seed for r in runs] == [0, 1, 2]
    assert [r.work_name
            for r in runs] == [f'{runs[0].name}/seed-{k}' for k in range(3)]
    assert runs[2].cfg_options == ['--cfg-options', 'randomness.seed=2']
    (single, ) = select_runs('mini', tasks=['det'], norms=['sn'])
    assert single.seed is None and single.work_name == single.name
    assert single.cfg_options == []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(
                ValueError,
                match=f'seeds must be a positive integer, got '
                f'{bad!r}'):
            select_runs('mini', seeds=bad)


def test_run_suite_tool_rejects_zero_seeds(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_tool('run_suite', '--seeds', '0')
    assert exit_info.value.code == 2
    assert '--seeds must be at least 1, got 0' in capsys.readouterr().err


def test_run_suite_with_seeds_runs_each_seed_and_aggregates(
        tmp_path, monkeypatch, capsys):
    """``run_suite(seeds=3)``: one work directory per seed, the seed among
    the child's config overrides, and one leaderboard row with mean ± s
    (n=3).
    Training is replaced by writing each seed's logs (the real end-to-end
    run is test_suite.py's smoke test)."""
    from ssn_norm import suite
    from ssn_norm.apis.train_test import RESULT_FILE

    commands = {}

    def fake_execute(run, work_dir, preset, root, gpus, threads, schedule):
        commands[run.seed] = run.overrides
        _seed_run(Path(work_dir), SN_AP[run.seed], SN_COST[run.seed])
        record = dict(config=run.config, metrics={})
        (Path(work_dir) / RESULT_FILE).write_text(json.dumps(record))
        return dict(record, status='done', seconds=1.0)

    monkeypatch.setattr(suite, 'execute_run', fake_execute)
    monkeypatch.setattr(suite, 'prepare_data', lambda *args: None)
    failed = suite.run_suite(
        'mini', tasks=['det'], norms=['sn'], root=str(tmp_path), seeds=3)
    assert failed == 0
    (run, ) = select_runs('mini', tasks=['det'], norms=['sn'])
    suite_dir = tmp_path / 'work_dirs' / 'suite-mini'
    for seed in range(3):
        assert (suite_dir / run.name / f'seed-{seed}' / RESULT_FILE).exists()
        assert commands[seed] == {'randomness.seed': seed}
    board = (suite_dir / 'leaderboard.md').read_text()
    want = _expected(SN_AP, SN_COST)
    assert f'| {want["box"][0]:.1f} ± {want["box"][1]:.1f} (n=3) |' in board
    assert 'One seed per row' not in board
    assert '3 runs, 0 already done' in capsys.readouterr().out


def test_gn_ws_row_beside_table_v_with_mmdets_reference(tmp_path):
    """With the repository's metafiles: the GN+WS row of Table V's family
    shows mmdet's number as the reference and is compared with BN†/–,
    never chosen as the baseline itself (GN+WS is not GN)."""
    repo = Path(__file__).resolve().parents[1]
    names = {
        'faster-rcnn_r50_fpn_1x_coco': (0.367, 0.366),
        'faster-rcnn_r50-gn_fpn_gn-head_1x_coco': (0.382, 0.381),
        'faster-rcnn_r50-gn-ws_fpn_gn-ws-head_1x_coco': (0.396, 0.395),
    }
    for name, ap in names.items():
        _seed_run(tmp_path / name, ap, SN_COST[0])
    board = gather([str(tmp_path)], [str(repo / 'model-index.yml')])
    (table, ) = board.tables
    rows = {row.label: row for row in table.rows}
    bn = rows['faster-rcnn_r50_fpn_1x_coco']
    gn_ws = rows['faster-rcnn_r50-gn-ws_fpn_gn-ws-head_1x_coco']
    assert gn_ws.setting == 'GN-WS+GN-WS' and gn_ws.paper is None
    assert gn_ws.reference.metrics == {'box AP': 39.7}
    assert 'mmdetection model zoo' in gn_ws.reference.title
    assert {id(row.baseline) for row in table.rows} == {id(bn)}
    md = board.to_markdown()
    line, details = [
        x for x in md.splitlines() if x.startswith('| faster-rcnn_r50-gn-ws')
    ]
    assert '| +2.9 box AP, +0% train time, +0% inference time, +0% memory ' \
        'vs BN†/– |' in line
    assert '| box AP 39.7 (Faster R-CNN R-50-FPN GN+WS (gn-ws-all) 1x, 12 ' \
        'epochs) |' in details
    # Without BN†/– the GN/GN row is the baseline, GN+WS still is not.
    board = gather([
        str(tmp_path / name) for name in names
        if name.startswith(('faster-rcnn_r50-gn_', 'faster-rcnn_r50-gn-ws'))
    ], [str(repo / 'model-index.yml')])
    (table, ) = board.tables
    rows = {row.label: row for row in table.rows}
    gn = rows['faster-rcnn_r50-gn_fpn_gn-head_1x_coco']
    assert {id(row.baseline) for row in table.rows} == {id(gn)}
