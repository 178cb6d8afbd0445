"""Tiny Kinetics generator: both on-disk layouts, every decoder, the labels."""
import os.path as osp

import numpy as np
import pytest

import ssn_norm  # noqa: F401  stubs mmaction2's missing DRN before mmaction
from ssn_norm.datasets.tiny_kinetics import CLASSES, make_tiny_kinetics

NUM_FRAMES = 12
SIZE = 64


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny_kinetics')
    return make_tiny_kinetics(
        str(root), num_train=8, num_val=4, num_frames=NUM_FRAMES, seed=3)


def read_lines(path):
    with open(path) as f:
        return [line.split() for line in f.read().splitlines()]


def test_layout_and_list_files(data):
    assert read_lines(data['label_map']) == [[c] for c in CLASSES]
    for split, count in (('train', 8), ('val', 4)):
        videos = read_lines(data[f'ann_videos_{split}'])
        frames = read_lines(data[f'ann_rawframes_{split}'])
        assert len(videos) == len(frames) == count
        labels = [int(label) for _, label in videos]
        assert labels == [i % len(CLASSES) for i in range(count)]
        for (video, label), (frame_dir, num, label_f) in zip(videos, frames):
            assert video == frame_dir + '.mp4' and label == label_f
            assert CLASSES[int(label)] in video
            assert osp.isfile(osp.join(data[f'videos_{split}'], video))
            assert int(num) == NUM_FRAMES
            for t in (1, NUM_FRAMES):
                assert osp.isfile(
                    osp.join(data[f'rawframes_{split}'], frame_dir,
                             f'img_{t:05d}.jpg'))
            assert not osp.exists(
                osp.join(data[f'rawframes_{split}'], frame_dir,
                         f'img_{NUM_FRAMES + 1:05d}.jpg'))


def disc_centre(frame):
    """Centre of the bright disc in an RGB/BGR frame (H, W, 3)."""
    mask = frame.astype(np.float32).min(-1) > 140
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_label_is_the_direction_of_motion(data):
    """Checked on decoded pixels, independently of the generator's code."""
    import decord
    moves = {'up': (0, -1), 'down': (0, 1), 'left': (-1, 0), 'right': (1, 0)}
    for video, label in read_lines(data['ann_videos_train']):
        reader = decord.VideoReader(osp.join(data['videos_train'], video))
        first = disc_centre(reader[0].asnumpy())
        last = disc_centre(reader[len(reader) - 1].asnumpy())
        shift = last - first
        direction = np.array(moves[CLASSES[int(label)]])
        assert shift @ direction > 0.4 * SIZE  # moved far along the label
        assert abs(shift @ direction[::-1]) < 2  # and not across it


def test_same_seed_same_pixels(tmp_path, data):
    import cv2
    again = make_tiny_kinetics(
        str(tmp_path), num_train=8, num_val=1, num_frames=NUM_FRAMES, seed=3)
    name = 'train_00005_down/img_00007.jpg'
    np.testing.assert_array_equal(
        cv2.imread(osp.join(data['rawframes_train'], name)),
        cv2.imread(osp.join(again['rawframes_train'], name)))


def run_pipeline(dataset: str, decode: str, init=(), **dataset_cfg):
    """(length, sample 1) of an mmaction ``dataset`` reading 4-frame clips
    (every 2nd frame) with the ``decode`` transform (after ``init``), packed
    as NCTHW."""
    from mmaction.registry import DATASETS
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    pipeline = [
        *init,
        dict(type='SampleFrames', clip_len=4, frame_interval=2, num_clips=1),
        dict(type=decode),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs')
    ]
    built = DATASETS.build(
        dict(type=dataset, pipeline=pipeline, **dataset_cfg))
    return len(built), built[1]


def check_clip(sample) -> None:
    """One 4-frame clip of label 1, as the generated data holds."""
    assert tuple(sample['inputs'].shape) == (1, 3, 4, SIZE, SIZE)
    assert sample['data_samples'].gt_label.item() == 1


@pytest.mark.parametrize('decoder', ['Decord', 'OpenCV'])
def test_video_decoders_read_the_videos(data, decoder):
    """decord (the configs' decoder) and the OpenCV fallback."""
    length, sample = run_pipeline(
        'VideoDataset',
        f'{decoder}Decode',
        init=[dict(type=f'{decoder}Init')],
        data_root=data['root'],
        ann_file='kinetics400_train_list_videos.txt',
        data_prefix=dict(video='videos_train'))
    assert length == 8
    check_clip(sample)
    assert 40 < float(sample['inputs'].float().mean()) < 200


def test_rawframe_dataset_reads_the_frames(data):
    length, sample = run_pipeline(
        'RawframeDataset',
        'RawFrameDecode',
        data_root=data['root'],
        ann_file='kinetics400_val_list_rawframes.txt',
        data_prefix=dict(img='rawframes_val'),
        filename_tmpl='img_{:05}.jpg')
    assert length == 4
    check_clip(sample)


@pytest.mark.parametrize('kwargs, match', [
    (dict(frame_size=63), 'frame_size must be even'),
    (dict(frame_size=8), 'frame_size must be an int >= 16, got 8'),
    (dict(num_train=0), 'num_train must be an int >= 1, got 0'),
    (dict(num_frames=1.5), 'num_frames must be an int >= 2, got 1.5'),
    (dict(frame_size=48), 'decord cannot decode .* choose another '
     'frame_size'),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        make_tiny_kinetics(
            str(tmp_path), **dict(dict(num_train=1, num_val=1), **kwargs))
