"""Tiny, learnable scenes in the ADE20K (ADEChallengeData2016) layout.

``make_tiny_ade20k(root)`` writes::

    root/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    root/annotations/{training,validation}/ADE_{train,val}_<8 digits>.png

where ``root`` plays the part of ``ADEChallengeData2016``, so mmseg's
``ADE20KDataset`` reads it unchanged.  Annotation values follow ADE20K: 0 is
"other" (ignored through ``reduce_zero_label=True``) and class ``c`` of the
150 is stored as ``c + 1``.  The scenes are those of
:func:`~ssn_norm.datasets.tiny_cityscapes.paint_street_scene`, saved as JPEG
like the real images.
"""
import os
import os.path as osp
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from .tiny_cityscapes import (KINDS, check_split_sizes, ensure_empty_dirs,
                              paint_street_scene)

#: Stored annotation value of each kind (ADE20K class index + 1: wall 1,
#: building 2, sky 3, tree 5, road 7, person 13, car 21); 0 is "other".
ADE20K_LABELS = {
    'road': 7,
    'building': 2,
    'vegetation': 5,
    'sky': 3,
    'person': 13,
    'car': 21
}
_JPEG_QUALITY = 95


def make_tiny_ade20k(root: str,
                     num_train: int = 8,
                     num_val: int = 4,
                     size: Tuple[int, int] = (128, 128),
                     seed: int = 0) -> Dict[str, int]:
    """Write a tiny ADE20K-layout dataset under ``root``.

    The same arguments always produce byte-identical files.

    Args:
        root: dataset root, the counterpart of ``ADEChallengeData2016``
            (created if missing); ``images`` and ``annotations`` under it must
            not already hold files.
        num_train: images in ``training``.
        num_val: images in ``validation``.
        size: ``(width, height)`` of every image.
        seed: random seed.

    Returns:
        The number of images written per split,
        ``{'training': n, 'validation': m}``.

    Raises:
        ValueError: a count or size is invalid.
        FileExistsError: the layout folders already hold files.
    """
    width, height = check_split_sizes(num_train, num_val, size)
    ensure_empty_dirs(root, ('images', 'annotations'))

    rng = np.random.default_rng(seed)
    labels = np.zeros(256, np.uint8)  # ignored pixels become "other" (0)
    for i, name in enumerate(KINDS):
        labels[i] = ADE20K_LABELS[name]
    counts = {}
    for split, prefix, num in (('training', 'ADE_train', num_train),
                               ('validation', 'ADE_val', num_val)):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for index in range(1, num + 1):
            stem = f'{prefix}_{index:08d}'
            image, kinds = paint_street_scene(rng, width, height)
            Image.fromarray(image).save(
                osp.join(img_dir, stem + '.jpg'), quality=_JPEG_QUALITY)
            Image.fromarray(labels[kinds]).save(
                osp.join(ann_dir, stem + '.png'))
        counts[split] = num
    return counts
