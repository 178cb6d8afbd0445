"""Tiny Cityscapes / ADE20K generators: layouts, labels, mmseg reads them."""
import os
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

import ssn_norm  # noqa: F401  registers the norms (built by the configs)
from ssn_norm.datasets.tiny_ade20k import ADE20K_LABELS, make_tiny_ade20k
from ssn_norm.datasets.tiny_cityscapes import (CITYSCAPES_TRAIN_IDS,
                                               make_tiny_cityscapes)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _files(root):
    return sorted(
        osp.relpath(osp.join(d, f), root) for d, _, fs in os.walk(root)
        for f in fs)


def _build_dataset(cfg):
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return DATASETS.build(cfg)


def test_tiny_cityscapes_layout_and_labels(tmp_path):
    counts = make_tiny_cityscapes(
        str(tmp_path), num_train=3, num_val=2, size=(64, 32))
    assert counts == {'train': 3, 'val': 2}
    assert _files(tmp_path) == [
        'gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png',
        'gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png',
        'gtFine/train/bochum/bochum_000000_000019_gtFine_labelTrainIds.png',
        'gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds'
        '.png',
        'gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelTrainIds'
        '.png',
        'leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png',
        'leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png',
        'leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png',
        'leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png',
        'leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png',
    ]
    allowed = set(CITYSCAPES_TRAIN_IDS.values()) | {255}
    for path in _files(tmp_path):
        array = np.asarray(Image.open(tmp_path / path))
        if path.startswith('gtFine'):
            assert array.shape == (32, 64) and array.dtype == np.uint8
            assert set(np.unique(array)) <= allowed
            # Ego-vehicle strip at the bottom is ignored, sky is on top.
            assert (array[-1] == 255).all()
            assert (array[0] == CITYSCAPES_TRAIN_IDS['sky']).any()
        else:
            assert array.shape == (32, 64, 3) and array.dtype == np.uint8


def test_tiny_cityscapes_is_deterministic(tmp_path):
    make_tiny_cityscapes(str(tmp_path / 'a'), num_train=2, num_val=1)
    make_tiny_cityscapes(str(tmp_path / 'b'), num_train=2, num_val=1)
    make_tiny_cityscapes(str(tmp_path / 'c'), num_train=2, num_val=1, seed=1)
    for path in _files(tmp_path / 'a'):
        same = (tmp_path / 'a' / path).read_bytes()
        assert same == (tmp_path / 'b' / path).read_bytes()
        assert same != (tmp_path / 'c' / path).read_bytes()


def _images(root):
    return [
        np.asarray(Image.open(osp.join(root, path)), np.float64)
        for path in _files(root) if path.startswith('leftImg8bit/train')
    ]


def test_tiny_cityscapes_photometric_variation(tmp_path):
    """Photographs in other light: per-image brightness and contrast vary
    far more than in the plain scenes; the first scene's labels are the
    same (photometry changes pixels, not layouts)."""
    plain, varied = str(tmp_path / 'plain'), str(tmp_path / 'varied')
    make_tiny_cityscapes(plain, num_train=16, num_val=1)
    make_tiny_cityscapes(varied, num_train=16, num_val=1, photometric=True)
    spread = {}
    for name, root in (('plain', plain), ('varied', varied)):
        images = _images(root)
        spread[name] = (np.std([im.mean() for im in images]),
                        np.std([im.std() for im in images]))
    assert spread['varied'][0] > 3 * spread['plain'][0]  # brightness
    assert spread['varied'][1] > 3 * spread['plain'][1]  # contrast
    label = 'gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png'
    image = 'leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png'
    assert (tmp_path / 'plain' / label).read_bytes() == \
        (tmp_path / 'varied' / label).read_bytes()
    assert (tmp_path / 'plain' / image).read_bytes() != \
        (tmp_path / 'varied' / image).read_bytes()


def test_tiny_cityscapes_is_read_by_mmseg(tmp_path):
    make_tiny_cityscapes(str(tmp_path), num_train=4, num_val=2)
    dataset = _build_dataset(
        dict(
            type='CityscapesDataset',
            data_root=str(tmp_path),
            data_prefix=dict(
                img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations')
            ]))
    assert len(dataset) == 4
    sample = dataset[0]
    on_disk = np.asarray(Image.open(sample['seg_map_path']))
    assert sample['img'].shape == (128, 256, 3)
    np.testing.assert_array_equal(sample['gt_seg_map'], on_disk)
    # Every class of a scene is present somewhere in the split.
    present = set()
    for i in range(len(dataset)):
        present |= set(np.unique(dataset[i]['gt_seg_map']).tolist())
    assert present == set(CITYSCAPES_TRAIN_IDS.values()) | {255}


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_train=0), 'num_train must be a positive int, got 0'),
    (dict(num_val=2.0), 'num_val must be a positive int, got 2.0'),
    (dict(size=(16, 64)), r'size must be \(width, height\) with both ints '
     r'>= 32, got \(16, 64\)'),
    (dict(size=128), r'size must be \(width, height\) .* got 128'),
    (dict(train_cities=('new_york', )), "train_cities must be .* got "
     r"\('new_york',\)"),
    (dict(val_cities='frankfurt'), "val_cities must be .* got 'frankfurt'"),
])
def test_tiny_cityscapes_rejects_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tiny_cityscapes(str(tmp_path), **kwargs)
    assert not tmp_path.joinpath('leftImg8bit').exists()


def test_generators_refuse_to_mix_with_existing_files(tmp_path):
    make_tiny_cityscapes(str(tmp_path), num_train=1, num_val=1)
    with pytest.raises(
            FileExistsError, match='leftImg8bit already contains files'):
        make_tiny_cityscapes(str(tmp_path), num_train=1, num_val=1)
    make_tiny_ade20k(str(tmp_path), num_train=1, num_val=1)
    with pytest.raises(FileExistsError, match='images already contains'):
        make_tiny_ade20k(str(tmp_path), num_train=1, num_val=1)


def test_tiny_ade20k_layout_and_labels(tmp_path):
    counts = make_tiny_ade20k(str(tmp_path), num_train=2, num_val=1)
    assert counts == {'training': 2, 'validation': 1}
    assert _files(tmp_path) == [
        'annotations/training/ADE_train_00000001.png',
        'annotations/training/ADE_train_00000002.png',
        'annotations/validation/ADE_val_00000001.png',
        'images/training/ADE_train_00000001.jpg',
        'images/training/ADE_train_00000002.jpg',
        'images/validation/ADE_val_00000001.jpg',
    ]
    with Image.open(tmp_path / 'images/training/ADE_train_00000001.jpg') as im:
        assert im.format == 'JPEG' and im.size == (128, 128)
    labels = np.asarray(
        Image.open(tmp_path / 'annotations/training/ADE_train_00000001.png'))
    # 0 is ADE20K's "other" (the ego-vehicle strip here).
    assert set(np.unique(labels)) <= set(ADE20K_LABELS.values()) | {0}
    assert (labels[-1] == 0).all()


def test_tiny_ade20k_through_the_real_ade20k_pipeline(tmp_path):
    """The ADE20K configs' own train pipeline reads the generated layout."""
    make_tiny_ade20k(str(tmp_path), num_train=2, num_val=1)
    cfg = Config.fromfile(
        osp.join(
            REPO, 'configs/fcn/'
            'fcn-1conv_r50b-d8-sn-8x32_8xb2-80k_ade20k-512x512.py'))
    train = cfg.train_dataloader.dataset
    train.data_root = str(tmp_path)
    dataset = _build_dataset(train)
    assert len(dataset) == 2
    sample = dataset[0]
    # reduce_zero_label: "other" -> 255, class c + 1 -> c.
    labels = sample['data_samples'].gt_sem_seg.data
    expected = {v - 1 for v in ADE20K_LABELS.values()} | {255}
    assert set(labels.unique().tolist()) <= expected
    assert sample['inputs'].shape[0] == 3
