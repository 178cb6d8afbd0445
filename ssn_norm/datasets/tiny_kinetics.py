"""A tiny, learnable action-recognition data set in the Kinetics layouts.

Each clip shows a coloured disc sliding across a textured background; the
class is the direction of motion (:data:`CLASSES`).  A single frame carries
no information about the class, so a network must use time to beat chance,
which is what a video benchmark should exercise.

:func:`make_tiny_kinetics` writes both layouts that mmaction2 reads:

* videos (``VideoDataset``)::

      root/videos_train/<name>.mp4
      root/kinetics400_train_list_videos.txt       # "<name>.mp4 <label>"

* raw frames (``RawframeDataset``, ``filename_tmpl='img_{:05}.jpg'``)::

      root/rawframes_train/<name>/img_00001.jpg ...
      root/kinetics400_train_list_rawframes.txt    # "<name> <frames> <label>"

and likewise for ``val``, plus ``label_map.txt`` (one class name per line).
The list-file names are mmaction's Kinetics-400 ones, so a config written for
this data runs on a real Kinetics folder by changing ``data_root`` only.

Videos are MPEG-4 part 2 (``mp4v``) written by OpenCV; decord, PyAV and
OpenCV all decode them.  Note that a horizontal flip swaps the classes
``left`` and ``right``: train without ``Flip`` on this data.
"""
import os
import os.path as osp
from typing import Dict, Tuple

import numpy as np

#: Class names, in label order: the direction the disc moves.
CLASSES: Tuple[str, ...] = ('up', 'down', 'left', 'right')

# Unit motion vector (dx, dy) of each class in image coordinates.
_DIRECTIONS = {'up': (0, -1), 'down': (0, 1), 'left': (-1, 0), 'right': (1, 0)}


def _render_clip(rng: np.random.Generator, label: int, num_frames: int,
                 size: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 BGR of one clip of class ``label``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # A static low-contrast texture, different per clip, so that the disc
    # is not the only structure in the frame.
    texture = rng.uniform(60, 110, size=(size // 4 + 1, size // 4 + 1, 3))
    background = np.kron(texture, np.ones((4, 4, 1)))[:size, :size]
    radius = size / 8
    colour = rng.uniform(150, 255, size=3)
    dx, dy = _DIRECTIONS[CLASSES[label]]
    # Travel most of the free span, starting where the disc stays inside.
    span = size - 2 * radius - 2
    travel = span * rng.uniform(0.6, 0.9)
    lo, hi = radius + 1, size - radius - 1
    start = rng.uniform(lo, hi, size=2)
    for axis, step in ((0, dx), (1, dy)):
        if step > 0:
            start[axis] = rng.uniform(lo, hi - travel)
        elif step < 0:
            start[axis] = rng.uniform(lo + travel, hi)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        frac = t / max(num_frames - 1, 1)
        cx = start[0] + dx * travel * frac
        cy = start[1] + dy * travel * frac
        disc = ((xx - cx)**2 + (yy - cy)**2 <= radius**2)[..., None]
        noise = rng.normal(0, 4, size=(size, size, 3))
        frame = np.where(disc, colour, background) + noise
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def _write_video(path: str, frames: np.ndarray, fps: int) -> None:
    import cv2
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                             (width, height))
    if not writer.isOpened():
        raise RuntimeError(
            f'OpenCV cannot write {path} with the mp4v codec; install an '
            'OpenCV build with FFmpeg support (opencv-python does)')
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def _check_decodable(path: str, frames: np.ndarray) -> None:
    """Fail now, with the fix, if decord cannot read what we wrote."""
    try:
        import decord
    except ImportError:
        return  # the configs' decoder is not installed; nothing to check
    try:
        reader = decord.VideoReader(path)
        decoded = reader.get_batch(list(range(len(reader)))).asnumpy()
    except decord.DECORDError as error:
        raise RuntimeError(
            f'decord cannot decode {path} ({frames.shape[2]}x'
            f'{frames.shape[1]} frames): {str(error).splitlines()[0]}; '
            'choose another frame_size, e.g. 64') from error
    if decoded.shape != frames.shape:
        raise RuntimeError(
            f'decord decoded {path} as {decoded.shape}, expected '
            f'{frames.shape}; choose another frame_size, e.g. 64')


def make_tiny_kinetics(root: str,
                       num_train: int = 64,
                       num_val: int = 32,
                       num_frames: int = 16,
                       frame_size: int = 64,
                       fps: int = 8,
                       rawframes: bool = True,
                       seed: int = 0) -> Dict[str, str]:
    """Write a tiny motion-direction data set in the Kinetics layouts.

    Classes are balanced (clip ``i`` has label ``i % 4``); the same arguments
    always give the same pixels.

    Args:
        root: output folder (created; existing files are overwritten).
        num_train: training clips.
        num_val: validation clips (also the test split).
        num_frames: frames per clip.
        frame_size: height and width of the square frames; even, >= 16.
            Note that decord 0.6 fails on some small sizes (16, 24, 48,
            72); the first clip of each split is checked when decord is
            installed.
        fps: frame rate stored in the videos.
        rawframes: also write the raw-frame layout.
        seed: random seed.

    Returns:
        Absolute paths by name: ``root``, ``label_map``, and per split
        ``videos_<split>``, ``ann_videos_<split>`` and (with ``rawframes``)
        ``rawframes_<split>``, ``ann_rawframes_<split>``.
    """
    minimum = dict(num_train=1, num_val=1, num_frames=2, frame_size=16, fps=1)
    given = dict(
        num_train=num_train,
        num_val=num_val,
        num_frames=num_frames,
        frame_size=frame_size,
        fps=fps)
    for name, low in minimum.items():
        value = given[name]
        if not isinstance(value, int) or value < low:
            raise ValueError(f'{name} must be an int >= {low}, got {value!r}')
    if frame_size % 2:
        raise ValueError('frame_size must be even (MPEG-4 needs even frame '
                         f'sizes), got {frame_size}')
    import cv2
    root = osp.abspath(root)
    os.makedirs(root, exist_ok=True)
    paths = {'root': root, 'label_map': osp.join(root, 'label_map.txt')}
    with open(paths['label_map'], 'w') as f:
        f.write('\n'.join(CLASSES) + '\n')
    rng = np.random.default_rng(seed)
    for split, count in (('train', num_train), ('val', num_val)):
        video_dir = osp.join(root, f'videos_{split}')
        frame_root = osp.join(root, f'rawframes_{split}')
        os.makedirs(video_dir, exist_ok=True)
        video_lines, frame_lines = [], []
        for i in range(count):
            label = i % len(CLASSES)
            name = f'{split}_{i:05d}_{CLASSES[label]}'
            frames = _render_clip(rng, label, num_frames, frame_size)
            _write_video(osp.join(video_dir, name + '.mp4'), frames, fps)
            if i == 0:
                _check_decodable(osp.join(video_dir, name + '.mp4'), frames)
            video_lines.append(f'{name}.mp4 {label}')
            if rawframes:
                frame_dir = osp.join(frame_root, name)
                os.makedirs(frame_dir, exist_ok=True)
                for t, frame in enumerate(frames, start=1):
                    cv2.imwrite(
                        osp.join(frame_dir, f'img_{t:05d}.jpg'), frame,
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
                frame_lines.append(f'{name} {num_frames} {label}')
        paths[f'videos_{split}'] = video_dir
        paths[f'ann_videos_{split}'] = osp.join(
            root, f'kinetics400_{split}_list_videos.txt')
        with open(paths[f'ann_videos_{split}'], 'w') as f:
            f.write('\n'.join(video_lines) + '\n')
        if rawframes:
            paths[f'rawframes_{split}'] = frame_root
            paths[f'ann_rawframes_{split}'] = osp.join(
                root, f'kinetics400_{split}_list_rawframes.txt')
            with open(paths[f'ann_rawframes_{split}'], 'w') as f:
                f.write('\n'.join(frame_lines) + '\n')
    return paths
