"""Every row of the SN paper's Tables VII and VIII sits on a config that
runs the row's setting, with all of the row's numbers in its metafile entry.

The paper's numbers are transcribed here from its text
(/work/shared/papers/sn-tpami.txt, TPAMI version) independently of the
metafiles.  Also: the "ms" test-time augmentation the configs expose, and
the Cityscapes test-set submission of Table VII's split, run end to end on
tiny generated data.
"""
import copy
import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from mmengine.config import Config
from PIL import Image
# Helpers of the config tests (pytest puts tests/ on sys.path); importing
# the fixture makes it act here too.
from test_seg_configs import memoised_external_bases  # noqa: F401
from test_seg_configs import (MINI, NORM_LAYERS, REAL, REPO, SETTINGS,
                              build_model, load, norm_of)
from torch import nn

from ssn_norm import SN, SyncSN
from ssn_norm.datasets.tiny_cityscapes import make_tiny_cityscapes

TPAMI = ('Switchable Normalization for Learning-to-Normalize Deep '
         'Representation')
ROWS = ('SyncBN', 'GN', 'SN(8,2)', 'SN(8,4)', 'SN(8,32)', 'SyncSN(8,2)',
        'SyncSN(8,4)', 'SyncSN(8,32)')
# (table, family, dataset) -> row -> (mIoU single-scale, mIoU multi-scale).
PAPER = {
    ('VII', 'fcn', 'ade20k'):
    dict(
        zip(ROWS, [(36.4, 37.7), (35.7, 36.3), (38.7, 39.2), (38.6, 39.0),
                   (37.7, 38.4), (39.0, 39.3), (39.8, 39.9), (40.0, 40.4)])),
    ('VII', 'fcn', 'cityscapes'):
    dict(
        zip(ROWS, [(69.7, 73.0), (68.4, 73.1), (71.6, 75.4), (72.1, 75.8),
                   (72.2, 75.8), (75.5, 76.9), (75.8, 77.0), (76.7, 77.5)])),
    ('VIII', 'pspnet', 'cityscapes'):
    dict(
        zip(ROWS, [(76.3, 76.9), (72.6, 74.3), (75.9, 76.4), (77.1, 77.9),
                   (76.2, 77.3), (76.0, 76.6), (77.1, 78.3), (76.7, 77.8)])),
}
NORM_TYPE = {'SyncBN': 'SyncBN', 'GN': 'GN', 'SN': 'SN', 'SyncSN': 'SyncSN'}
# Cityscapes label ids of the 19 train ids (cityscapesscripts' table).
LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31,
             32, 33)


def metafile(family):
    with open(osp.join(REPO, 'configs', family, 'metafile.yml')) as f:
        return yaml.safe_load(f)


def entries_by_row():
    """``(table, family, dataset, row label) -> metafile model entry``."""
    rows = {}
    for family in ('fcn', 'pspnet'):
        for model in metafile(family)['Models']:
            if 'Paper' not in model:
                continue
            paper = model['Paper']
            dataset = model['Metadata']['Training Data'].lower()
            key = (paper['Table'], family, dataset, paper['Setting'])
            assert key not in rows, f'two entries for {key}'
            rows[key] = model
    return rows


def test_every_row_has_exactly_one_entry():
    expected = {(table, family, dataset, row)
                for (table, family, dataset), rows in PAPER.items()
                for row in rows}
    assert set(entries_by_row()) == expected


@pytest.mark.parametrize(
    'key', [(t, f, d, r) for (t, f, d), rows in PAPER.items() for r in rows],
    ids=lambda key: '-'.join(key))
def test_paper_row_entry_and_config_setting(key):
    table, family, dataset, row = key
    model = entries_by_row()[key]
    paper = model['Paper']
    single, multi = PAPER[(table, family, dataset)][row]
    assert paper['Title'] == TPAMI
    assert paper['Metrics'] == {'mIoU': single, 'mIoU(ms)': multi}
    # Table VII's Cityscapes columns are on the test set; we evaluate val.
    if table == 'VII' and dataset == 'cityscapes':
        assert paper['Split'] == 'test'
    else:
        assert 'Split' not in paper

    config = model['Config']
    assert model['Name'] == osp.splitext(osp.basename(config))[0]
    cfg = load(config)
    norm, _, k = row.partition('(')
    assert cfg.norm_cfg.type == NORM_TYPE[norm]
    for part in ('backbone', 'decode_head', 'auxiliary_head'):
        assert cfg.model[part].norm_cfg.type == NORM_TYPE[norm]
    checkpoint = cfg.model.backbone.init_cfg.checkpoint
    if k:  # (8,k): the SN ImageNet model of 8 GPUs x k images
        k = k.rstrip(')').split(',')[1]
        assert checkpoint == f'checkpoints/resnet50-v1_sn-8x{k}_in1k.pth'
    else:
        assert 'resnet50-v1_sn' not in checkpoint
    assert cfg.model.backbone.type == 'ResNet'
    assert checkpoint in model['Metadata']['Pretrained']
    # 16 images per iteration on 8 GPUs, the paper's 2 per GPU.
    assert cfg.train_dataloader.batch_size == 2
    assert model['Metadata']['Batch Size'] == 16
    assert model['Metadata']['Iterations'] == cfg.train_cfg.max_iters
    crop = 713 if dataset == 'cityscapes' else 512
    assert cfg.crop_size == (crop, crop)
    assert model['Metadata']['Crop Size'] == f'{crop}x{crop}'
    assert cfg.train_dataloader.dataset.type == (
        'CityscapesDataset' if dataset == 'cityscapes' else 'ADE20KDataset')
    # What tools/test.py evaluates by default: a labelled val split.
    prefix = cfg.test_dataloader.dataset.data_prefix.img_path
    assert prefix == ('leftImg8bit/val'
                      if dataset == 'cityscapes' else 'images/validation')
    # SyncSN: no merge hook (its statistics are global); SN: the hook.
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    assert hooks == (['SyncNormStatsHook'] if norm == 'SN' else [])
    # "BN uses batch average after training" (TPAMI 3, Inference).
    batch_stats = cfg.default_hooks.get('batch_stats')
    if norm in ('SN', 'SyncSN'):
        assert batch_stats.type == 'BatchStatsHook'
        assert batch_stats.stages == ('train_end', )
        assert batch_stats.get('statistics', 'batch_average') == \
            'batch_average'
    else:
        assert batch_stats is None


TABLE_VII = [(f, d, r) for (t, f, d), rows in PAPER.items() if t == 'VII'
             for r in rows]


@pytest.mark.parametrize('key', TABLE_VII, ids=lambda key: '-'.join(key))
def test_table_vii_builds_the_papers_model(key):
    """Table VII's model as its authors' released code builds it
    ("ResNet50_dilated8 + c1_bilinear_deepsup"): the 7x7-stem ResNet-50
    dilated to output stride 8, a one-conv decode head and a one-conv
    auxiliary head on res4 (loss weight 0.4), with the row's normaliser in
    each head's single norm layer."""
    from mmseg.models.decode_heads import FCNHead
    family, dataset, row = key
    model_entry = entries_by_row()[('VII', family, dataset, row)]
    cfg = load(model_entry['Config'])
    model = build_model(cfg.model, 'meta')
    norm = NORM_TYPE[row.partition('(')[0]]
    layer_types = {
        'SyncBN': nn.SyncBatchNorm,
        'GN': nn.GroupNorm,
        'SN': SN,
        'SyncSN': SyncSN
    }
    for head, in_index, in_channels, weight in ((model.decode_head, 3, 2048,
                                                 1.0), (model.auxiliary_head,
                                                        2, 1024, 0.4)):
        assert type(head) is FCNHead
        assert (head.in_index, head.in_channels, head.channels, head.num_convs,
                head.concat_input) == (in_index, in_channels, 512, 1, False)
        assert head.dropout is None  # none in the released heads
        assert head.convs[0].conv.kernel_size == (3, 3)
        assert head.loss_decode.loss_weight == weight
        norms = [m for m in head.modules() if isinstance(m, NORM_LAYERS)]
        assert len(norms) == 1
        if norm == 'SyncBN':
            assert isinstance(norms[0], nn.SyncBatchNorm)
        else:
            assert type(norms[0]) is layer_types[norm]
    backbone = model.backbone
    assert type(backbone).__name__ == 'ResNet' and not backbone.deep_stem
    assert (backbone.conv1.kernel_size, backbone.conv1.stride) == ((7, 7), (2,
                                                                            2))
    assert (backbone.strides, backbone.dilations) == ((1, 2, 1, 1), (1, 1, 2,
                                                                     4))
    # Output stride 8: stride 2 only in res3's first block; res4 and res5
    # dilated 2 and 4, their first block at half that (contract_dilation).
    for name, stride, first, rest in (('layer1', 1, 1, 1), ('layer2', 2, 1, 1),
                                      ('layer3', 1, 1, 2), ('layer4', 1, 2,
                                                            4)):
        blocks = list(getattr(backbone, name))
        assert blocks[0].conv2.stride == (stride, stride), name
        assert blocks[0].conv2.dilation == (first, first), name
        assert {b.conv2.dilation for b in blocks[1:]} == {(rest, rest)}
        assert all(b.conv2.stride == (1, 1) for b in blocks[1:])


def test_ssn_configs_and_ours_carry_no_paper_row():
    for family in ('fcn', 'pspnet'):
        for model in metafile(family)['Models']:
            norm = norm_of(model['Config'])
            if norm in ('ssn', 'gsn2'):  # gsn2: ours, group SN
                assert 'Paper' not in model
                assert model['Metadata']['Normalization'] == norm.upper()


@pytest.mark.parametrize('family', ['fcn', 'pspnet'])
def test_metafile_lists_every_config_once(family):
    """Full-size and mini configs (not the user-data example), each mini
    with its parent as ``Paper Reference``, as the other families."""
    models = metafile(family)['Models']
    listed = [m['Config'] for m in models]
    assert sorted(listed) == sorted(
        c for c in REAL + MINI
        if f'/{family}/' in c and '_my-cityscapes' not in c)
    for model in models:
        if '/mini/' not in model['Config']:
            assert 'Paper Reference' not in model
            continue
        assert 'Paper' not in model
        with open(osp.join(REPO, model['Config'])) as f:
            first_base = re.search(r"_base_ = \[?\s*'([^']+)'",
                                   f.read()).group(1)
        assert model['Paper Reference'] == osp.splitext(
            osp.basename(first_base))[0]
    with open(osp.join(REPO, 'model-index.yml')) as f:
        assert f'configs/{family}/metafile.yml' in yaml.safe_load(f)['Import']


@pytest.mark.parametrize('setting', sorted(SETTINGS))
@pytest.mark.parametrize('norm', ['sn', 'syncsn'])
@pytest.mark.parametrize('k', [2, 4])
def test_8xk_configs_differ_from_8x32_only_in_the_checkpoint(setting, norm, k):
    family, _ = setting
    pattern = SETTINGS[setting]
    child = copy.deepcopy(
        load(f'configs/{family}/{pattern.format(f"{norm}-8x{k}")}.py'))
    parent = load(f'configs/{family}/{pattern.format(f"{norm}-8x32")}.py')
    assert child.model.backbone.init_cfg.checkpoint == \
        f'checkpoints/resnet50-v1_sn-8x{k}_in1k.pth'
    child.model.backbone.init_cfg.checkpoint = \
        parent.model.backbone.init_cfg.checkpoint
    assert child.to_dict() == parent.to_dict()


def _tta_views(cfg, image_path, seg_map_path=None):
    """Run ``cfg.tta_pipeline`` on one image: the list of views' shapes and
    whether each is flipped."""
    from mmengine.dataset import Compose
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    results = Compose(cfg.tta_pipeline)(
        dict(
            img_path=image_path,
            seg_map_path=seg_map_path,
            reduce_zero_label=False,
            seg_fields=[]))
    return [
        (tuple(inputs.shape[1:]), sample.metainfo.get('flip', False))
        for inputs, sample in zip(results['inputs'], results['data_samples'])
    ]


@pytest.fixture(scope='module')
def tiny_cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_cityscapes')
    make_tiny_cityscapes(str(root), num_train=1, num_val=2)
    return str(root)


@pytest.mark.parametrize('config', REAL)
def test_multi_scale_test_is_six_scales_without_flip(config, tiny_cityscapes):
    """The "ms" column: what ``tools/test.py --tta`` runs, on a 256x128
    image: x0.5 ... x1.75, no flipped view (the paper names no flip)."""
    cfg = load(config)
    assert cfg.tta_model.type == 'SegTTAModel'
    image = glob.glob(
        osp.join(tiny_cityscapes, 'leftImg8bit', 'val', '*', '*.png'))[0]
    label = image.replace('_leftImg8bit.png', '_gtFine_labelTrainIds.png')
    label = label.replace('leftImg8bit', 'gtFine', 1)
    views = _tta_views(cfg, image, label)
    assert views == [((round(128 * r), round(256 * r)), False)
                     for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)]


CITYSCAPES = [c for c in REAL if 'cityscapes' in c]


def test_test_split_switch(monkeypatch):
    config = osp.join(REPO, CITYSCAPES[0])
    monkeypatch.setenv('SSN_CITYSCAPES_TEST_SPLIT', 'test')
    cfg = Config.fromfile(config)
    dataset = cfg.test_dataloader.dataset
    assert dataset.data_prefix.img_path == 'leftImg8bit/test'
    types = [t['type'] for t in dataset.pipeline]
    assert types == ['LoadImageFromFile', 'Resize', 'PackSegInputs']
    assert cfg.test_evaluator == dict(
        type='CityscapesMetric',
        format_only=True,
        keep_results=True,
        output_dir='work_dirs/cityscapes_test_submission')
    assert 'LoadAnnotations' not in str(cfg.tta_pipeline)
    # Training and validation stay on train / val with labels.
    assert cfg.val_dataloader.dataset.data_prefix.img_path == \
        'leftImg8bit/val'
    assert 'LoadAnnotations' in str(cfg.val_dataloader.dataset.pipeline)
    assert cfg.val_evaluator.type == 'IoUMetric'
    assert cfg.train_dataloader.dataset.data_prefix.img_path == \
        'leftImg8bit/train'

    monkeypatch.setenv('SSN_CITYSCAPES_TEST_SPLIT', 'Test')
    with pytest.raises(
            ValueError,
            match=r"SSN_CITYSCAPES_TEST_SPLIT='Test': expected 'val' "
            r"\(labelled, mIoU\) or 'test' \(submission files\), or unset"):
        Config.fromfile(config)


def test_cityscapes_test_set_submission_on_tiny_data(tmp_path):
    """``SSN_CITYSCAPES_TEST_SPLIT=test tools/test.py`` writes one label-id
    PNG per leftImg8bit/test image and reads no label."""
    import torch
    root = tmp_path / 'data'
    make_tiny_cityscapes(str(root), num_train=1, num_val=3)
    # The generator makes train and val; the test split is val's images
    # under test cities, without any gtFine.
    names = []
    for i, image in enumerate(
            sorted(glob.glob(str(root / 'leftImg8bit/val/*/*.png')))):
        stem = f'berlin_{i:06d}_000019_leftImg8bit'
        os.makedirs(root / 'leftImg8bit/test/berlin', exist_ok=True)
        shutil.copy(image, root / 'leftImg8bit/test/berlin' / f'{stem}.png')
        names.append(stem)
    assert not (root / 'gtFine' / 'test').exists()

    config = osp.join(
        REPO, 'configs/fcn/mini/'
        'fcn-1conv_r18-d8-sn_mini_tiny-cityscapes.py')
    env = dict(
        os.environ,
        SSN_CITYSCAPES_TEST_SPLIT='test',
        SSN_TINY_CITYSCAPES=str(root) + '/')
    cfg = Config.fromfile(config)
    model = build_model(cfg.model)
    checkpoint = str(tmp_path / 'init.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, checkpoint)
    out = tmp_path / 'submission'
    proc = subprocess.run([
        sys.executable, 'tools/test.py', config, checkpoint, '--work-dir',
        str(tmp_path / 'work'), '--cfg-options',
        f'test_evaluator.output_dir={out}'
    ],
                          cwd=REPO,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = sorted(osp.basename(p) for p in glob.glob(str(out / '*.png')))
    assert written == sorted(f'{n}.png' for n in names)
    for name in written:
        labels = np.asarray(Image.open(out / name))
        assert labels.shape == (128, 256)  # the image's own size
        assert set(np.unique(labels)) <= set(LABEL_IDS)
