"""docs/own_data.md as a new user follows it: their own COCO-format data
(3 classes, polygons, their own folder names), the documented config in a
folder outside the repository, tools/train.py and tools/test.py run from
there."""
import glob
import json
import os
import os.path as osp
import re

import cv2
import numpy as np
import torch
from _helpers import run_tool_process

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOC = osp.join(REPO, 'docs', 'own_data.md')
CLASSES = ('box', 'triangle', 'hexagon')
COLOURS = ((230, 60, 40), (40, 210, 70), (60, 90, 240))


def _polygon(label, cx, cy, r):
    sides = (4, 3, 6)[label]
    angles = np.arange(sides) * 2 * np.pi / sides + np.pi / 4
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)


def make_my_data(root, split, num_images, first_id, size=96, seed=0):
    """``root/images/<split>/*.png`` and ``root/labels/<split>.json``: one
    or two shapes per image, a polygon each."""
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'images', split), exist_ok=True)
    os.makedirs(osp.join(root, 'labels'), exist_ok=True)
    images, annotations = [], []
    for image_id in range(first_id, first_id + num_images):
        image = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
        for slot in range(int(rng.integers(1, 3))):
            label = int(rng.integers(3))
            cx = size * (0.3 + 0.4 * slot) + rng.uniform(-4, 4)
            cy, r = rng.uniform(28, size - 28), rng.uniform(14, 20)
            points = _polygon(label, cx, cy, r)
            cv2.fillPoly(image, [np.round(points).astype(np.int32)],
                         COLOURS[label][::-1])
            x0, y0 = points.min(0)
            x1, y1 = points.max(0)
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=label + 1,
                    segmentation=[points.round(1).ravel().tolist()],
                    area=float(cv2.contourArea(points.astype(np.float32))),
                    bbox=[
                        float(x0),
                        float(y0),
                        float(x1 - x0),
                        float(y1 - y0)
                    ],
                    iscrowd=0))
        name = f'{image_id:05d}.png'
        cv2.imwrite(osp.join(root, 'images', split, name), image)
        images.append(
            dict(id=image_id, file_name=name, width=size, height=size))
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    with open(osp.join(root, 'labels', f'{split}.json'), 'w') as f:
        json.dump(
            dict(
                images=images, annotations=annotations, categories=categories),
            f)


def documented_config():
    """The config block of docs/own_data.md, with this clone's path."""
    with open(DOC) as f:
        text = f.read()
    block = re.search(r'<!-- own-data config[^\n]*\n```python\n(.*?)```', text,
                      re.S)
    assert block, 'docs/own_data.md lost its marked config block'
    return block.group(1).replace('/path/to/ssn-norm', REPO)


def _run(cwd, tool, *args):
    return run_tool_process(tool, *args, cwd=str(cwd))


def test_own_coco_data_from_a_folder_outside_the_repository(tmp_path):
    user = tmp_path / 'user'
    assert not str(user).startswith(REPO)
    make_my_data(str(user / 'mydata'), 'train', 8, 1)
    make_my_data(str(user / 'mydata'), 'val', 4, 100, seed=1)
    (user / 'my_mask-rcnn_sn.py').write_text(documented_config())

    train = _run(user, 'train.py', 'my_mask-rcnn_sn.py', '--work-dir',
                 'work_dirs/my_sn')
    assert 'ConfigWarning' not in train.stderr, train.stderr[-3000:]
    work_dir = user / 'work_dirs' / 'my_sn'
    # 8 images, batches of 2, the documented 2 epochs: one checkpoint.
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['epoch_2.pth']
    # The added hook ran beside the parent's SyncNormStatsHook.
    (log, ) = glob.glob(str(work_dir / '*' / '*.log'))
    with open(log) as f:
        text = f.read()
    for hook in ('CheckInvalidLossHook', 'SyncNormStatsHook'):
        # The runner's list of registered hooks, e.g. '(NORMAL      ) X'.
        assert re.search(rf'^\([A-Z_ ]+\) {hook}\b', text, re.M), hook
    state = torch.load(
        work_dir / 'epoch_2.pth', map_location='cpu', weights_only=False)
    assert state['meta']['dataset_meta']['classes'] == CLASSES
    assert state['state_dict']['roi_head.bbox_head.fc_cls.weight'].shape[
        0] == len(CLASSES) + 1

    _run(user, 'test.py', 'my_mask-rcnn_sn.py', 'work_dirs/my_sn/epoch_2.pth',
         '--work-dir', 'work_dirs/my_sn_test')
    (result, ) = glob.glob(
        str(user / 'work_dirs' / 'my_sn_test' / '*' / '[0-9]*_[0-9]*.json'))
    with open(result) as f:
        metrics = json.load(f)
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
