"""Tiny, learnable street scenes in the Cityscapes on-disk layout.

``make_tiny_cityscapes(root)`` writes::

    root/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png

which mmseg's ``CityscapesDataset`` reads unchanged (``data_prefix=dict(
img_path='leftImg8bit/train', seg_map_path='gtFine/train')``).  Each scene has
sky, a building band with an uneven roofline, road, trees, cars and people,
each painted in its Cityscapes palette colour plus noise, and an ego-vehicle
strip labelled 255 (ignored) as in the real data.  Colour and shape tell the
classes apart, so a small network learns them in a few hundred iterations.
Only numpy and Pillow are used.
"""
import os
import os.path as osp
import re
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image

#: Kinds of region a scene is painted with, in paint order.
KINDS = ('road', 'building', 'vegetation', 'sky', 'person', 'car')
#: Kind-map value of pixels no class owns (the ego vehicle).
IGNORE = 255

#: Cityscapes train id of each kind (trainId convention of
#: ``*_gtFine_labelTrainIds.png``; 255 is ignored).
CITYSCAPES_TRAIN_IDS = {
    'road': 0,
    'building': 2,
    'vegetation': 8,
    'sky': 10,
    'person': 11,
    'car': 13
}

# Cityscapes palette colours, so the scenes look like its colour label maps.
_COLOURS = {
    'road': (128, 64, 128),
    'building': (70, 70, 70),
    'vegetation': (107, 142, 35),
    'sky': (70, 130, 180),
    'person': (220, 20, 60),
    'car': (0, 0, 142)
}
# Boxes per scene (min, max), width and height ranges (fractions of the
# image): cars wide and low, people narrow and upright.
_BOXES = {
    'car': ((1, 3), (0.12, 0.22), (0.1, 0.16)),
    'person': ((2, 4), (0.05, 0.08), (0.2, 0.3)),
}
_NOISE_STD = 12.0
_BRIGHTNESS_JITTER = 20.0
# Photometric variation between images (``photometric=True``), as between
# photographs taken in different light: contrast about the image mean
# x0.5 to x1.5 (log-uniform), brightness -50 to +50, an illumination
# gradient of up to 60 levels end to end across the image in a random
# direction, and a colour cast of x0.9 to x1.1 per channel.  Fixed before
# any claims run (issue 27); not tuned to any outcome.
_CONTRAST_RANGE = (0.5, 1.5)
_BRIGHTNESS_RANGE = 50.0
_GRADIENT_MAX = 60.0
_CAST_RANGE = 0.1
_MIN_SIZE = 32
_CITY_NAME = re.compile(r'^[a-z][a-z0-9]*$')


def paint_street_scene(rng: np.random.Generator, width: int,
                       height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Paint one random street scene.

    Args:
        rng: source of randomness (the scene is a pure function of its state).
        width: image width in pixels (>= 32).
        height: image height in pixels (>= 32).

    Returns:
        ``(image, kinds)``: an RGB ``uint8`` array of shape (H, W, 3) and a
        ``uint8`` map of shape (H, W) holding indices into :data:`KINDS`, or
        :data:`IGNORE` on the ego-vehicle strip at the bottom.

    Raises:
        ValueError: ``width`` or ``height`` is below 32.
    """
    if width < _MIN_SIZE or height < _MIN_SIZE:
        raise ValueError(f'scenes need width and height >= {_MIN_SIZE}, got '
                         f'{width}x{height}')
    kinds = np.zeros((height, width), np.uint8)
    k = {name: i for i, name in enumerate(KINDS)}
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]

    # Sky above an uneven roofline, buildings down to the horizon, road below.
    horizon = int(rng.uniform(0.45, 0.6) * height)
    roof = np.empty(width, np.int64)
    edges = np.sort(rng.choice(np.arange(1, width), 5, replace=False))
    for lo, hi in zip(np.r_[0, edges], np.r_[edges, width]):
        roof[lo:hi] = int(rng.uniform(0.1, 0.35) * height)
    kinds[:] = k['road']
    kinds[:horizon] = k['building']
    kinds[rows < roof[None, :]] = k['sky']

    # Trees: ellipses standing on the horizon.
    for _ in range(rng.integers(1, 3)):
        cx = rng.uniform(0, width)
        cy = horizon - rng.uniform(0, 0.15) * height
        rx = rng.uniform(0.06, 0.12) * width
        ry = rng.uniform(0.12, 0.2) * height
        inside = ((cols - cx) / rx)**2 + ((rows - cy) / ry)**2 <= 1
        kinds[inside] = k['vegetation']
    # Cars and people: boxes standing on the road.
    for name, (count, box_w, box_h) in _BOXES.items():
        for _ in range(rng.integers(*count, endpoint=True)):
            w = max(2, int(rng.uniform(*box_w) * width))
            h = max(2, int(rng.uniform(*box_h) * height))
            bottom = int(rng.uniform(horizon + h * 0.5, height * 0.9))
            left = int(rng.uniform(0, width - w))
            kinds[max(bottom - h, 0):bottom, left:left + w] = k[name]

    # Ego-vehicle hood: ignored in the labels, dark in the image.
    kinds[height - max(2, height // 16):] = IGNORE

    colours = np.zeros((256, 3), np.float32)
    for name, colour in _COLOURS.items():
        colours[k[name]] = colour
    image = colours[kinds]
    image += rng.uniform(-_BRIGHTNESS_JITTER, _BRIGHTNESS_JITTER)
    image += rng.normal(0, _NOISE_STD, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), kinds


def vary_photometry(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` as if photographed in other light.

    Each call draws its own contrast (a factor about the image's mean
    grey level), brightness offset, linear illumination gradient and
    per-channel colour cast, so statistics over a batch of such images
    vary from batch to batch the way they do over photographs.

    Args:
        rng: source of randomness.
        image: an RGB ``uint8`` array (H, W, 3).

    Returns:
        The changed image, ``uint8`` of the same shape.
    """
    height, width = image.shape[:2]
    x = image.astype(np.float32)
    mean = x.mean()
    low, high = np.log(_CONTRAST_RANGE)
    contrast = np.exp(rng.uniform(low, high))
    brightness = rng.uniform(-_BRIGHTNESS_RANGE, _BRIGHTNESS_RANGE)
    angle = rng.uniform(0, 2 * np.pi)
    amplitude = rng.uniform(0, _GRADIENT_MAX)
    cast = rng.uniform(1 - _CAST_RANGE, 1 + _CAST_RANGE, size=3)
    rows = (np.arange(height)[:, None] / max(height - 1, 1)) - 0.5
    cols = (np.arange(width)[None, :] / max(width - 1, 1)) - 0.5
    ramp = amplitude * (cols * np.cos(angle) + rows * np.sin(angle))
    x = (x - mean) * contrast + mean + brightness + ramp[..., None]
    return np.clip(x * cast, 0, 255).astype(np.uint8)


def check_split_sizes(num_train: int, num_val: int,
                      size: Sequence[int]) -> Tuple[int, int]:
    """Validate generator arguments; returns ``size`` as ``(width, height)``.

    Raises:
        ValueError: naming the bad value.
    """
    for name, value in (('num_train', num_train), ('num_val', num_val)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and s >= _MIN_SIZE for s in size)):
        raise ValueError(f'size must be (width, height) with both ints >= '
                         f'{_MIN_SIZE}, got {size!r}')
    return int(size[0]), int(size[1])


def ensure_empty_dirs(root: str, names: Sequence[str]) -> None:
    """Raise if any ``root/<name>`` already holds files (no silent mixing)."""
    for name in names:
        path = osp.join(root, name)
        if osp.isdir(path) and any(files for _, _, files in os.walk(path)):
            raise FileExistsError(
                f'{path} already contains files; generate into an empty '
                'root (or delete that folder) so old and new samples do not '
                'mix')


def make_tiny_cityscapes(root: str,
                         num_train: int = 8,
                         num_val: int = 4,
                         size: Tuple[int, int] = (256, 128),
                         train_cities: Sequence[str] = ('aachen', 'bochum'),
                         val_cities: Sequence[str] = ('frankfurt', ),
                         seed: int = 0,
                         photometric: bool = False) -> Dict[str, int]:
    """Write a tiny Cityscapes-layout dataset under ``root``.

    Images are spread round-robin over the cities of their split.  The same
    arguments always produce byte-identical files.

    Args:
        root: dataset root (created if missing); ``leftImg8bit`` and
            ``gtFine`` under it must not already hold files.
        num_train: images in ``train``.
        num_val: images in ``val``.
        size: ``(width, height)`` of every image (Cityscapes is 2:1).
        train_cities: city folder names of the train split.
        val_cities: city folder names of the val split.
        seed: random seed.
        photometric: vary contrast, brightness, illumination gradient and
            colour cast from image to image (:func:`vary_photometry`), as
            photographs do; off, the images are those of earlier releases.

    Returns:
        The number of images written per split, ``{'train': n, 'val': m}``.

    Raises:
        ValueError: a count, size or city name is invalid.
        FileExistsError: the layout folders already hold files.
    """
    width, height = check_split_sizes(num_train, num_val, size)
    for split, cities in (('train', train_cities), ('val', val_cities)):
        if isinstance(cities, str) or not cities or not all(
                isinstance(c, str) and _CITY_NAME.match(c) for c in cities):
            raise ValueError(
                f'{split}_cities must be a non-empty sequence of lower-case '
                f'alphanumeric names (no "_", it separates the file name '
                f'fields), got {cities!r}')
    ensure_empty_dirs(root, ('leftImg8bit', 'gtFine'))

    rng = np.random.default_rng(seed)
    train_ids = np.full(256, 255, np.uint8)
    for i, name in enumerate(KINDS):
        train_ids[i] = CITYSCAPES_TRAIN_IDS[name]
    counts = {}
    for split, num, cities in (('train', num_train, train_cities),
                               ('val', num_val, val_cities)):
        for index in range(num):
            city = cities[index % len(cities)]
            stem = f'{city}_{index // len(cities):06d}_000019'
            image, kinds = paint_street_scene(rng, width, height)
            if photometric:
                image = vary_photometry(rng, image)
            img_dir = osp.join(root, 'leftImg8bit', split, city)
            ann_dir = osp.join(root, 'gtFine', split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(ann_dir, exist_ok=True)
            Image.fromarray(image).save(
                osp.join(img_dir, stem + '_leftImg8bit.png'))
            Image.fromarray(train_ids[kinds]).save(
                osp.join(ann_dir, stem + '_gtFine_labelTrainIds.png'))
        counts[split] = num
    return counts
