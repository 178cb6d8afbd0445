"""Numpy values in checkpoints: only plain numeric ones load.

numpy's own unpickling functions trust the file: a dtype's pickled state
sets its flags, so a forged file can make numpy read raw bytes as object
pointers (the process crashes on access) or build an object array.  Each
forged file below is loaded in a subprocess, so a crash fails the test
instead of the test run.  Before the fix (its allow-list held numpy's own
``dtype``, ``_reconstruct`` and ``scalar``) the first file crashed the
loading process with SIGSEGV, ``object array`` and ``ndarray(...)`` loaded
object arrays, ``int dtype with fields`` and ``object scalar`` loaded, and
the float dtype with reference flags loaded into an array that numpy
failed on (``get_clear_loop`` not set).
"""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.core import multiarray

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Loads argv[1] the way mmengine's Runner does (CheckpointLoader, patched by
# ssn_norm.compat) and touches every numpy value in it.
LOADER = r'''
import json, sys
import numpy as np
import ssn_norm  # noqa: F401
from mmengine.runner import CheckpointLoader
from ssn_norm.compat import UntrustedCheckpointError
try:
    loaded = CheckpointLoader.load_checkpoint(sys.argv[1])
except UntrustedCheckpointError as error:
    print(json.dumps(dict(refused=str(error))))
    sys.exit(0)
found = []
def walk(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            walk(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            walk(value)
    elif isinstance(obj, (np.ndarray, np.generic, np.dtype)):
        dtype = obj if isinstance(obj, np.dtype) else obj.dtype
        values = repr(obj.tolist()) if hasattr(obj, 'tolist') else ''
        found.append([type(obj).__name__, dtype.str, dtype.flags, values])
walk(loaded)
print(json.dumps(dict(loaded=found)))
'''


class Reduced:
    """Pickles as ``func(*args)`` followed by a BUILD of ``state``."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return self.func, self.args
        return self.func, self.args, self.state


def dtype(code, flags=0, fields=None, names=None, size=-1):
    """A pickled dtype with the given state (numpy's layout, version 3)."""
    return Reduced(np.dtype, (code, False, True),
                   (3, '|', None, names, fields, size, -1, flags))


def array(descr, raw, shape):
    """A pickled array: numpy's ``_reconstruct`` + BUILD of its state."""
    return Reduced(multiarray._reconstruct, (np.ndarray, (0, ), b'b'),
                   (1, shape, descr, False, raw))


FORGED = {
    # The file: the object dtype with its flags turned to 0, so
    # numpy copies the bytes into the array and reads them as pointers.
    'object dtype, flags 0':
    array(dtype('O8', flags=0), b'\x41' * 16, (2, )),
    # A float dtype flagged as holding references: freeing the array
    # decrements "references" made of float bits.
    'float dtype with reference flags':
    array(dtype('f8', flags=63), b'\x41' * 16, (2, )),
    # An honest object array (numpy pickles its items as a list).
    'object array':
    array(dtype('O8', flags=63), [1, 'x'], (2, )),
    # A structured dtype with an object field.
    'structured dtype':
    array(
        dtype(
            'V8',
            flags=63,
            names=('a', ),
            fields={'a': (dtype('O8', flags=63), 0)},
            size=8), b'\x41' * 8, (1, )),
    # numpy.ndarray called by the pickle: an object array of NULLs.
    'ndarray(...)':
    Reduced(np.ndarray, ((2, ), 'O')),
    # An object scalar.
    'object scalar':
    Reduced(multiarray.scalar, (dtype('O8', flags=63), 'x')),
    # A plain dtype whose state claims fields.
    'int dtype with fields':
    dtype('i8', fields={'a': (dtype('O8', flags=63), 0)}, names=('a', )),
}


def load_in_subprocess(tmp_path, obj, name='forged.pth'):
    path = tmp_path / name
    torch.save({'state_dict': {}, 'meta': {'iter': obj}}, path)
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop('SSN_NORM_TRUST_CHECKPOINTS', None)
    result = subprocess.run(
        [sys.executable, '-c', LOADER, str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=300)
    assert result.returncode == 0, (
        f'the loader died with {result.returncode}:\n{result.stderr[-2000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('case', list(FORGED))
def test_forged_numpy_values_are_refused(tmp_path, case):
    outcome = load_in_subprocess(tmp_path, FORGED[case])
    assert 'refused' in outcome, f'{case}: loaded {outcome}'
    assert 'refused to unpickle it: refused ' in outcome['refused']
    assert ('only arrays, scalars and dtypes of booleans, integers, floats '
            'and complex numbers are allowed') in outcome['refused']


def test_numeric_values_load_unchanged(tmp_path):
    values = {
        'f8': np.linspace(-1, 1, 6).reshape(2, 3),
        'f4 big-endian': np.arange(4, dtype='>f4'),
        'i8 fortran': np.asfortranarray(np.arange(6).reshape(2, 3)),
        'u1': np.arange(3, dtype=np.uint8),
        'bool': np.array([True, False]),
        'complex': np.array([1 + 2j]),
        '0-d': np.array(2.5),
        'scalars': [np.float64(0.1),
                    np.int64(-3),
                    np.bool_(True)],
        'dtype': np.dtype('<i4'),
    }
    outcome = load_in_subprocess(tmp_path, values, 'plain.pth')
    assert 'loaded' in outcome, outcome
    loaded = outcome['loaded']
    expected = []
    for value in values.values():
        for item in (value if isinstance(value, list) else [value]):
            dtype = item if isinstance(item, np.dtype) else item.dtype
            shown = repr(item.tolist()) if hasattr(item, 'tolist') else ''
            expected.append(
                [type(item).__name__, dtype.str, dtype.flags, shown])
    assert loaded == expected


def test_numeric_values_keep_their_layout(tmp_path):
    from ssn_norm.compat import safe_load
    value = np.asfortranarray(np.arange(6, dtype='>i2').reshape(2, 3))
    path = tmp_path / 'layout.pth'
    torch.save({'a': value, 'nested': ({'b': value}, )}, path)
    loaded = safe_load(str(path))
    for array_ in (loaded['a'], loaded['nested'][0]['b']):
        assert type(array_) is np.ndarray
        assert array_.dtype == np.dtype('>i2')
        assert array_.flags.f_contiguous and array_.flags.writeable
        np.testing.assert_array_equal(array_, value)


def test_array_outside_containers_is_refused(tmp_path):
    from ssn_norm.compat import UntrustedCheckpointError, safe_load

    # An array as a dict key (hashable only as the unpickling stand-in).
    path = tmp_path / 'key.pth'
    torch.save({'meta': {array(dtype('f8'), b'\0' * 8, (1, )): 1}}, path)
    with pytest.raises(
            UntrustedCheckpointError,
            match='refused a numpy array where only containers may hold '
            'one'):
        safe_load(str(path))
