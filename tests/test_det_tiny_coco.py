"""The tiny COCO generator writes a valid, learnable COCO-layout set."""
import json
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from ssn_norm.datasets.tiny_coco import CLASSES, make_tiny_coco


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_coco')
    files = make_tiny_coco(
        str(root), num_train=6, num_val=4, image_size=96, seed=3)
    return str(root), files


def _load(ann_file):
    with open(ann_file) as f:
        return json.load(f)


def test_layout_is_coco_2017(tiny_coco):
    root, files = tiny_coco
    assert files == {
        'train': osp.join(root, 'annotations', 'instances_train2017.json'),
        'val': osp.join(root, 'annotations', 'instances_val2017.json')
    }
    for split, count in (('train', 6), ('val', 4)):
        data = _load(files[split])
        assert len(data['images']) == count
        for image in data['images']:
            path = osp.join(root, f'{split}2017', image['file_name'])
            pixels = cv2.imread(path)
            assert pixels is not None, path
            assert pixels.shape == (96, 96, 3)
            assert (image['height'], image['width']) == (96, 96)
        assert [c['name'] for c in data['categories']] == list(CLASSES)
        assert [c['id'] for c in data['categories']] == [1, 2, 3]


def test_ids_unique_across_splits_and_every_image_annotated(tiny_coco):
    _, files = tiny_coco
    train, val = _load(files['train']), _load(files['val'])
    image_ids = [i['id'] for i in train['images'] + val['images']]
    ann_ids = [a['id'] for a in train['annotations'] + val['annotations']]
    assert len(set(image_ids)) == len(image_ids) == 10
    assert len(set(ann_ids)) == len(ann_ids)
    for data in (train, val):
        annotated = {a['image_id'] for a in data['annotations']}
        assert annotated == {i['id'] for i in data['images']}


def test_polygons_boxes_areas_and_pixels_agree(tiny_coco):
    root, files = tiny_coco
    coco = COCO(files['val'])
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann['iscrowd'] == 0
        polygon = np.array(ann['segmentation'][0]).reshape(-1, 2)
        assert len(polygon) in (3, 4, 24)  # triangle, square, disc
        x, y, w, h = ann['bbox']
        np.testing.assert_allclose([x, y, x + w, y + h],
                                   [*polygon.min(0), *polygon.max(0)],
                                   atol=0.011)
        # Rasterising moves the area by at most about a pixel band along
        # the outline.
        perimeter = np.linalg.norm(
            polygon - np.roll(polygon, 1, axis=0), axis=1).sum()
        mask = coco.annToMask(ann)
        assert abs(mask.sum() - ann['area']) <= perimeter
        # The object is painted in its class colour: red squares, green
        # discs, blue triangles (RGB), whatever the background.
        image = cv2.imread(
            osp.join(root, 'val2017',
                     coco.imgs[ann['image_id']]['file_name']))[..., ::-1]
        inside = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
        colour = image[inside].astype(float).mean(0)
        assert int(np.argmax(colour)) == ann['category_id'] - 1, colour


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    first = make_tiny_coco(str(tmp_path / 'a'), 3, 2, 64, seed=1)
    again = make_tiny_coco(str(tmp_path / 'b'), 3, 2, 64, seed=1)
    other = make_tiny_coco(str(tmp_path / 'c'), 3, 2, 64, seed=2)
    assert _load(first['train']) == _load(again['train'])
    assert _load(first['val']) == _load(again['val'])
    assert (_load(first['train'])['annotations']
            != _load(other['train'])['annotations'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_train=0), r'num_train must be an int >= 1, got 0'),
    (dict(num_val=2.5), r'num_val must be an int >= 1, got 2\.5'),
    (dict(image_size=16), r'image_size must be an int >= 32, got 16'),
    (dict(max_objects=True), r'max_objects must be an int >= 1, got True'),
    (dict(seed='0'), r"seed must be an int, got '0'"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_tiny_coco(str(tmp_path), **kwargs)
    assert not (tmp_path / 'annotations').exists()
