"""Helpers shared by the test modules.

Imported as ``_helpers``: pytest puts this folder on ``sys.path`` (rootdir
conftest, prepend import mode).  ``tests/`` is deliberately not a package:
the mmseg wheel installs a top-level package named ``tests``.
"""
import contextlib
import datetime
import fcntl
import importlib.util
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Optional

import pytest
import torch
import torch.distributed as dist

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: Devices the layer and backend tests run on: the CPU always, CUDA where
#: present (otherwise reported as skipped, with the reason).
DEVICES = [
    'cpu',
    pytest.param(
        'cuda',
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(),
            reason='no CUDA device on this machine'))
]


def _providers_present() -> list:
    from ssn_norm.ops.providers import PRIORITY, PROVIDERS
    x = torch.zeros(1, 1, 1, dtype=torch.float64)
    return [
        name for name in PRIORITY['cpu']
        if not PROVIDERS[name].not_supported_reasons(x)
    ]


#: The kernel providers of the CPU that serve fp64/fp32 input here: 'cpp'
#: where the C++ kernels are built (tests/test_native_kernel.py fails when
#: they are not), and 'eager'.  The 'compiled' provider is CUDA's; on the
#: CPU tests/test_providers.py forces it through Dynamo.
PROVIDERS_PRESENT = _providers_present()

#: The layer tests' parametrisation over the paths: the reference path
#: and the fast (and frozen) paths on each provider present.
BACKENDS = ['reference'] + PROVIDERS_PRESENT


def tool(name: str) -> ModuleType:
    """The module of ``tools/<name>.py``, freshly imported.

    The tools are scripts, not a package: each call loads the file anew
    under a private module name, without running its ``__main__`` block,
    so names a tool imports from the library see a test's monkeypatches.
    """
    path = osp.join(REPO, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name: str, *argv) -> int:
    """``tools/<name>.py`` run with the command line ``argv`` (converted to
    strings) through its ``main(argv)``; returns its exit status.  argparse
    errors raise ``SystemExit(2)`` as on the command line."""
    return tool(name).main([str(arg) for arg in argv])


def run_tool_process(tool_file: str, *args, cwd: str = REPO):
    """``python tools/<tool_file> args`` in a new process in ``cwd``, as a
    user runs it, with the test's thread count; asserts exit status 0
    (showing the ends of both outputs) and returns the completed process.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', tool_file)] +
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600)
    assert proc.returncode == 0, (f'{tool_file} failed:\n'
                                  f'{proc.stdout[-3000:]}\n'
                                  f'{proc.stderr[-6000:]}')
    return proc


def once_per_session(tmp_path_factory, name: str,
                     produce: Callable[[Path], None]) -> Path:
    """Runs ``produce(folder)`` once per test session and returns the folder.

    Under pytest-xdist each worker has its own module fixtures; the workers
    share one folder (and a lock) so the processes are started only once.
    """
    if 'PYTEST_XDIST_WORKER' not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        produce(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name
    with open(f'{folder}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / 'done').exists():
            shutil.rmtree(folder, ignore_errors=True)  # a failed attempt
            folder.mkdir()
            produce(folder)
            (folder / 'done').touch()
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank: int,
               world_size: int,
               port: int,
               timeout_s: float = 120) -> Iterator[None]:
    """The default gloo process group of a spawned test worker over
    ``127.0.0.1:port``, destroyed on exit (also on error), so a failing
    rank does not leave the others waiting beyond ``timeout_s``."""
    dist.init_process_group(
        'gloo',
        init_method=f'tcp://127.0.0.1:{port}',
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def loader_cfg(dataset,
               batch_size: int = 2,
               sampler: str = 'DefaultSampler',
               shuffle: bool = False) -> dict:
    """An mmengine dataloader config over ``dataset`` (a config or an
    instance): ``default_collate``, no worker processes."""
    return dict(
        dataset=dataset,
        sampler=dict(type=sampler, shuffle=shuffle),
        collate_fn=dict(type='default_collate'),
        batch_size=batch_size,
        num_workers=0)


def paper_entry(name: str,
                title: str,
                table: str,
                setting: str,
                metrics: str,
                split: Optional[str] = None,
                metadata: Optional[str] = None) -> str:
    """One ``Models`` entry of a metafile citing a paper table, as YAML
    lines (``metrics`` and ``metadata`` are the insides of flow mappings,
    e.g. ``'mIoU: 72.2, mIoU(ms): 75.8'``)."""
    lines = [f'  - Name: {name}']
    if metadata is not None:
        lines.append(f'    Metadata: {{{metadata}}}')
    lines += [
        '    Paper:', f"      Title: '{title}'", f"      Table: '{table}'",
        f"      Setting: '{setting}'"
    ]
    if split is not None:
        lines.append(f'      Split: {split}')
    lines.append(f'      Metrics: {{{metrics}}}')
    return '\n'.join(lines) + '\n'


class CountingBackend:
    """A ``torch.compile`` backend that runs the captured FX graph eagerly
    (no C++ compilation) and counts the graphs compiled."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward
