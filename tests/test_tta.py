"""``tools/test.py --tta``: the config edit, the run-info record, and the
leaderboard telling a multi-scale test from its run, not from a name.

The real multi-scale test of a trained model runs in
``tests/test_seg_e2e.py``; here everything is small and in-process.
"""
import json
import os.path as osp
from types import SimpleNamespace

import pytest
from _helpers import paper_entry, run_tool
from mmengine.config import Config

from ssn_norm.analysis import (DETECTION, SEGMENTATION, ResultWarning,
                               find_runs, gather)
from ssn_norm.apis import RUN_INFO, apply_tta, write_run_info

SEG = 'deeplabv3_r50b-d8-sn-8x32_8xb2-40k_cityscapes-713x713'
DET = 'faster-rcnn_r50-sn_fpn_sn-head_1x_coco'
TITLE = ('Switchable Normalization for Learning-to-Normalize Deep '
         'Representation')

PIPELINE = [dict(type='LoadImageFromFile'), dict(type='PackSegInputs')]
TTA_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(
        type='TestTimeAug',
        transforms=[[
            dict(type='Resize', scale_factor=r, keep_ratio=True)
            for r in (0.5, 1.0)
        ], [dict(type='PackSegInputs')]])
]


def _tiny_segmentor() -> dict:
    """A small mmseg model config (8-channel ResNet-18, FCN head)."""
    norm_cfg = dict(type='SN')
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor'),
        backbone=dict(
            type='ResNetV1c',
            depth=18,
            stem_channels=8,
            base_channels=8,
            norm_cfg=norm_cfg),
        decode_head=dict(
            type='FCNHead',
            in_channels=64,
            channels=8,
            num_convs=1,
            num_classes=3,
            norm_cfg=norm_cfg),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'))


def _config(**overrides) -> Config:
    cfg = dict(
        default_scope='mmseg',
        model=_tiny_segmentor(),
        tta_model=dict(type='SegTTAModel'),
        tta_pipeline=TTA_PIPELINE,
        test_dataloader=dict(
            batch_size=1,
            dataset=dict(type='CityscapesDataset', pipeline=PIPELINE)))
    cfg.update(overrides)
    return Config({k: v for k, v in cfg.items() if v is not None})


def test_apply_tta_wraps_the_model_and_swaps_the_pipeline():
    cfg = _config()
    model = cfg.model.to_dict()
    assert apply_tta(cfg) is cfg
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module.to_dict() == model
    assert cfg.test_dataloader.dataset.pipeline == TTA_PIPELINE


def test_apply_tta_builds_the_upstream_tta_model():
    """The edited config builds mmseg's SegTTAModel around our model, so a
    checkpoint of the plain model loads into its ``module``."""
    from mmengine.registry import init_default_scope
    from mmseg.models import SegTTAModel
    from mmseg.registry import MODELS

    import ssn_norm  # noqa: F401  registers SN
    init_default_scope('mmseg')
    cfg = apply_tta(_config())
    tta = MODELS.build(cfg.model)
    assert type(tta) is SegTTAModel
    plain = MODELS.build(_config().model)
    assert sorted(tta.module.state_dict()) == sorted(plain.state_dict())
    assert type(tta.module.backbone.layer1[0].bn1).__name__ == 'SN'


def test_apply_tta_reaches_the_pipeline_inside_a_dataset_wrapper():
    cfg = _config(
        test_dataloader=dict(
            dataset=dict(
                type='RepeatDataset',
                times=2,
                dataset=dict(type='CityscapesDataset', pipeline=PIPELINE))))
    apply_tta(cfg)
    dataset = cfg.test_dataloader.dataset
    assert 'pipeline' not in dataset
    assert dataset.dataset.pipeline == TTA_PIPELINE


@pytest.mark.parametrize('missing, message', [
    (('tta_model', ), r'--tta: the config has no tta_model; define both'),
    (('tta_pipeline', ), r'--tta: the config has no tta_pipeline; define'),
    (('tta_model', 'tta_pipeline'),
     r'--tta: the config has no tta_model and no tta_pipeline; define both '
     r"\(mmseg's _base_ datasets and default_runtime\.py do: "
     r"tta_model = dict\(type='SegTTAModel'\)"),
])
def test_apply_tta_without_a_recipe_says_what_to_add(missing, message):
    cfg = _config(**{key: None for key in missing})
    before = cfg.to_dict()
    with pytest.raises(ValueError, match=message):
        apply_tta(cfg)
    assert cfg.to_dict() == before  # nothing half-edited


def test_apply_tta_without_a_test_pipeline_is_an_error():
    cfg = _config(test_dataloader=dict(dataset=dict(type='X')))
    with pytest.raises(
            ValueError,
            match=r"test_dataloader\.dataset has no pipeline to replace "
            r"with tta_pipeline: \{'type': 'X'\}"):
        apply_tta(cfg)


def _runner(log_dir, model_type):
    return SimpleNamespace(
        log_dir=str(log_dir), cfg=Config(dict(model=dict(type=model_type))))


@pytest.mark.parametrize('tta', [True, False])
def test_run_info_is_written_beside_the_metrics(tmp_path, tta):
    log_dir = tmp_path / 'work' / '20240101_000000'
    path = write_run_info(
        _runner(log_dir, 'SegTTAModel' if tta else 'EncoderDecoder'), tta,
        'configs/x.py', 'ckpt.pth')
    assert path == str(log_dir / RUN_INFO)
    info = json.loads((log_dir / RUN_INFO).read_text())
    assert info == dict(
        tta=tta,
        config=osp.abspath('configs/x.py'),
        checkpoint=osp.abspath('ckpt.pth'),
        model='SegTTAModel' if tta else 'EncoderDecoder')
    # The analysis side reads it back with the test result beside it.
    (log_dir / '20240101_000000.json').write_text(json.dumps({'mIoU': 50.}))
    (run, ) = find_runs([str(tmp_path / 'work')])
    assert run.multi_scale is tta
    assert run.describe() == ('test --tta 20240101_000000'
                              if tta else 'test 20240101_000000')


def test_tool_refuses_tta_for_a_config_without_a_recipe(tmp_path):
    """The option reaches apply_tta, before anything is built or loaded."""
    config = tmp_path / 'no_tta.py'
    config.write_text("default_scope = 'mmseg'\nmodel = dict(type='X')\n")
    with pytest.raises(
            ValueError,
            match='--tta: the config has no tta_model and no tta_pipeline'):
        run_tool('test', config, tmp_path / 'missing.pth', '--tta')


def _test(run, timestamp, metrics, tta=None):
    folder = run / timestamp
    folder.mkdir(parents=True)
    (folder / f'{timestamp}.json').write_text(json.dumps(metrics))
    if tta is not None:
        (folder / RUN_INFO).write_text(json.dumps(dict(tta=tta)))


@pytest.fixture
def metafile(tmp_path):
    path = tmp_path / 'metafile.yml'
    path.write_text('Models:\n' + paper_entry(
        SEG,
        TITLE,
        'VII',
        'SN(8,32)',
        'mIoU: 72.2, mIoU(ms): 75.8',
        split='test') + paper_entry(DET, TITLE, 'V', 'SN/SN', 'box AP: 39.3'))
    return str(path)


def test_one_work_dir_tested_both_ways_fills_both_columns(tmp_path, metafile):
    """Same config, same work dir: the single-scale test (older) and the
    --tta test (newer) are both shown, told apart by the run info only."""
    root = tmp_path / 'work_dirs'
    _test(root / SEG, '20240101_000000', dict(mIoU=70.0, aAcc=95., mAcc=80.))
    _test(
        root / SEG,
        '20240102_000000',
        dict(mIoU=73.5, aAcc=96., mAcc=81.),
        tta=True)
    _test(
        root / SEG,
        '20240103_000000',
        dict(mIoU=70.4, aAcc=95., mAcc=80.),
        tta=False)  # a later single-scale test wins its column
    board = gather([str(root)], [metafile])
    (table, ) = board.tables
    assert table.task is SEGMENTATION
    (row, ) = table.rows
    assert row.label == SEG
    assert row.values == {
        'mIoU': 70.4,
        'aAcc': 95.,
        'mAcc': 80.,
        'mIoU(ms)': 73.5
    }
    assert row.evaluation_text() == ('ss: test 20240103_000000 (latest of 2); '
                                     'ms: test --tta 20240102_000000')
    md = board.to_markdown()
    assert '| 70.4 | 72.2 (test) | 73.5 | 75.8 (test) |' in md
    assert '| 95.0 | 80.0 |' in md  # the details table


def test_a_detection_tta_test_is_its_own_row_never_compared(
        tmp_path, metafile):
    root = tmp_path / 'work_dirs'
    _test(root / DET, '20240101_000000', {'coco/bbox_mAP': 0.395})
    _test(root / DET, '20240102_000000', {'coco/bbox_mAP': 0.41}, tta=True)
    board = gather([str(root)], [metafile])
    (table, ) = board.tables
    assert table.task is DETECTION
    rows = {row.label: row for row in table.rows}
    assert list(rows) == [DET, DET + ' (--tta)']
    plain, tta = rows[DET], rows[DET + ' (--tta)']
    assert plain.deltas == pytest.approx({'box AP': 0.2})
    assert tta.values == pytest.approx({'box AP': 41.0})
    assert tta.paper.metrics == {'box AP': 39.3}
    assert not tta.same_setting and tta.deltas == {}
    md = board.to_markdown()
    # The paper's single-scale number is not beside the --tta row: one
    # line under the table names it.
    assert f'| {DET} (--tta) | SN+SN | 41.0 | — | — |' in md
    assert f'| {DET} (--tta) | test --tta 20240102_000000 |' in md
    assert (f'Paper, a different setting (not comparable, no difference '
            f'computed): {DET} (--tta) → ') in md


def test_only_segmentation_names_still_mark_a_multi_scale_test(tmp_path):
    """Old ``_ms-flip-test`` wrappers were segmentation configs; in
    detection, ``_ms-3x`` names multi-scale *training*."""
    root = tmp_path / 'work_dirs'
    name = 'faster-rcnn_r50_fpn_ms-3x_coco'
    _test(root / name, '20240101_000000', {'coco/bbox_mAP': 0.4})
    (table, ) = gather([str(root)]).tables
    (row, ) = table.rows
    assert row.label == name and row.evaluation_text() == (
        'test 20240101_000000')


def test_an_unreadable_run_info_skips_its_test(tmp_path):
    root = tmp_path / 'work_dirs'
    _test(root / SEG, '20240101_000000', dict(mIoU=70.0))
    (root / SEG / '20240101_000000' / RUN_INFO).write_text('{"tta": tru')
    with pytest.warns(ResultWarning) as record:
        assert find_runs([str(root)]) == []
    text = '\n'.join(str(w.message) for w in record)
    assert f'{RUN_INFO}: unreadable run info (' in text
    assert 'its test result is skipped (single- or multi-scale cannot be ' \
        'told)' in text
