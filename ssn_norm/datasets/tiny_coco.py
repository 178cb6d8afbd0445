"""A tiny, learnable COCO-format instance-segmentation set, made on demand.

Each image shows one to ``max_objects`` non-overlapping shapes on a textured
background; the class is the shape and each class has its own colour family,
so a small detector trained from scratch reaches a clearly non-zero box mAP
within about a hundred CPU iterations.  Files follow the COCO 2017 layout
that mmdet's ``CocoDataset`` and ``CocoMetric`` read unchanged::

    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json
    root/train2017/000000000001.jpg ...
    root/val2017/000000000097.jpg ...   (ids continue after train)

Segmentations are polygons (``[[x1, y1, x2, y2, ...]]``, ``iscrowd=0``); the
shapes are painted from the very same vertices, so polygon, mask and box
agree up to anti-aliasing.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np

#: Category names, in category-id order (ids start at 1, as in COCO).
CLASSES = ('square', 'disc', 'triangle')

# Base colour (RGB) of each class; every object is jittered around it.
_COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230))
_COLOUR_JITTER = 25
# Object size (circumradius) as a fraction of the image side.
_MIN_RADIUS, _MAX_RADIUS = 0.11, 0.22
_DISC_VERTICES = 24
_PLACEMENT_TRIES = 50


def _check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) \
            or value < minimum:
        raise ValueError(
            f'make_tiny_coco: {name} must be an int >= {minimum}, got '
            f'{value!r}')
    return value


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey-ish stripes plus noise (RGB uint8), different in every image."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 24)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    stripes = 25 * np.sin(2 * math.pi * phase)
    base = rng.uniform(70, 170) + rng.uniform(-15, 15, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    image = base[None, None, :] + stripes[..., None] + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def _vertices(label: int, centre: Tuple[float, float], radius: float,
              angle: float) -> np.ndarray:
    """Polygon (K, 2) of the shape of class ``label`` (index into CLASSES)."""
    count = (4, _DISC_VERTICES, 3)[label]
    theta = angle + np.arange(count) * 2 * math.pi / count
    return np.stack([
        centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)
    ], 1)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(0.5 *
                 abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _place_objects(rng: np.random.Generator, size: int,
                   max_objects: int) -> List[Tuple[int, np.ndarray]]:
    """(label, polygon) pairs whose circumcircles do not overlap."""
    wanted = int(rng.integers(1, max_objects + 1))
    circles, objects = [], []
    for _ in range(_PLACEMENT_TRIES):
        if len(objects) == wanted:
            break
        radius = rng.uniform(_MIN_RADIUS, _MAX_RADIUS) * size
        centre = rng.uniform(radius, size - radius, size=2)
        if any(math.dist(centre, c) < radius + r + 2 for c, r in circles):
            continue
        label = int(rng.integers(len(CLASSES)))
        circles.append((centre, radius))
        objects.append((label,
                        _vertices(label, tuple(centre), radius,
                                  rng.uniform(0, 2 * math.pi))))
    return objects


def _paint(image: np.ndarray, rng: np.random.Generator, label: int,
           polygon: np.ndarray) -> None:
    colour = np.clip(
        np.array(_COLOURS[label]) +
        rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3), 0, 255)
    # Sub-pixel vertices (4 fractional bits) so the painted shape matches
    # the stored float polygon.
    points = np.round(polygon * 16).astype(np.int32)[None]
    cv2.fillPoly(
        image, points, [int(c) for c in colour], lineType=cv2.LINE_AA, shift=4)


def _write_split(root: str, split: str, num_images: int, first_id: int,
                 first_ann_id: int, image_size: int, max_objects: int,
                 rng: np.random.Generator) -> Tuple[str, int]:
    image_dir = osp.join(root, f'{split}2017')
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    for image_id in range(first_id, first_id + num_images):
        image = _background(rng, image_size)
        file_name = f'{image_id:012d}.jpg'
        for label, polygon in _place_objects(rng, image_size, max_objects):
            _paint(image, rng, label, polygon)
            polygon = np.clip(polygon, 0, image_size)
            x0, y0 = polygon.min(0)
            x1, y1 = polygon.max(0)
            annotations.append(
                dict(
                    id=ann_id,
                    image_id=image_id,
                    category_id=label + 1,
                    segmentation=[[
                        round(float(v), 2) for v in polygon.reshape(-1)
                    ]],
                    area=round(_polygon_area(polygon), 2),
                    bbox=[
                        round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)
                    ],
                    iscrowd=0))
            ann_id += 1
        path = osp.join(image_dir, file_name)
        # cv2 writes BGR.
        written = cv2.imwrite(path, image[..., ::-1],
                              [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not written:
            raise OSError(f'make_tiny_coco: could not write {path}')
        images.append(
            dict(
                id=image_id,
                file_name=file_name,
                height=image_size,
                width=image_size))
    ann_file = osp.join(root, 'annotations', f'instances_{split}2017.json')
    with open(ann_file, 'w') as f:
        json.dump(
            dict(
                info=dict(description=f'ssn-norm tiny COCO ({split})'),
                licenses=[],
                images=images,
                annotations=annotations,
                categories=[
                    dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(CLASSES)
                ]), f)
    return ann_file, ann_id


def make_tiny_coco(root: str,
                   num_train: int = 96,
                   num_val: int = 24,
                   image_size: int = 128,
                   seed: int = 0,
                   max_objects: int = 3) -> Dict[str, str]:
    """Write a tiny COCO-layout instance-segmentation set under ``root``.

    The output is a pure function of the arguments (same seed, same bytes up
    to the JPEG encoder); existing files of the same names are overwritten.
    Image ids run from 1 over train then val, so they are unique across the
    two splits.

    Args:
        root: dataset directory (created if missing).
        num_train: number of training images.
        num_val: number of validation images.
        image_size: side of the square images in pixels (>= 32).
        seed: seed of the random generator.
        max_objects: at most this many objects per image (at least one).

    Returns:
        ``{'train': ann_file, 'val': ann_file}``, absolute paths of the two
        annotation files.

    Raises:
        ValueError: an argument is out of range.
    """
    _check_positive_int('num_train', num_train)
    _check_positive_int('num_val', num_val)
    _check_positive_int('image_size', image_size, minimum=32)
    _check_positive_int('max_objects', max_objects)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f'make_tiny_coco: seed must be an int, got {seed!r}')
    root = osp.abspath(root)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    rng = np.random.default_rng(seed)
    train_file, next_ann_id = _write_split(root, 'train', num_train, 1, 1,
                                           image_size, max_objects, rng)
    val_file, _ = _write_split(root, 'val', num_val, num_train + 1,
                               next_ann_id, image_size, max_objects, rng)
    return {'train': train_file, 'val': val_file}
