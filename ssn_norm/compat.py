"""Runtime workarounds for the frozen OpenMMLab stack, all in one place.

Applied once by :func:`apply_all` when ``ssn_norm`` is imported with mmengine
installed; each patch is idempotent and does nothing where upstream is fine.
Packaging workarounds (``setuptools<81``, ``ftfy``/``regex``, the torch pin)
live in ``tools/install.sh``.

1. mmengine 0.10.7 loads checkpoints with ``torch.load``'s default, which is
   ``weights_only=True`` from torch 2.6 on; its own checkpoints hold
   ``HistoryBuffer`` and numpy objects, so ``--resume`` and ``load_from`` fail
   (open-mmlab/mmengine#1655).  We re-register the local-file loader with
   :func:`safe_load`: still ``weights_only=True``, plus, for that call only,
   exactly the types mmengine's checkpoints hold (see
   :func:`checkpoint_safe_globals`); numpy values are built by checked
   stand-ins, never by numpy's own unpickling functions, so only plain
   numeric arrays, scalars and dtypes can come out of a file.  Anything else
   (a pickle that would run code, an object array, a dtype whose state would
   make numpy read bytes as pointers) is refused with
   :class:`UntrustedCheckpointError`.  Full unpickling
   happens only when the user sets ``SSN_NORM_TRUST_CHECKPOINTS=1``
   (:data:`TRUST_CHECKPOINTS_ENV`); importing ``ssn_norm`` never enables it.
2. The mmaction2 1.2.0 wheel lacks ``mmaction/models/localizers/drn``
   (open-mmlab/mmaction2#2714), so ``import mmaction.models`` raises.  We
   install a placeholder module whose ``DRN`` raises a clear error when built;
   every other mmaction model imports as usual.  It must run before
   ``mmaction.models`` is first imported, which ``import ssn_norm`` (or
   ``custom_imports=dict(imports=['ssn_norm'])``) does.
3. mmengine resolves every ``mmdet::``/``mmseg::``/``mmaction::`` base by
   re-reading all of that package's ~200 metafiles (about 0.5 s a base).  We
   cache the index per package; the result is the same.
4. setuptools 80 warns on every ``import pkg_resources``, which mmengine
   does at import (the toolboxes need ``setuptools<81`` for it, see
   ``tools/install.sh``); the warning is not actionable, so it is silenced.
5. mmengine's ``LoggerHook.after_test_epoch`` writes the test metrics file
   ``<timestamp>/<timestamp>.json`` from every process of a distributed test,
   all to the same path; concurrent writes can leave it as invalid JSON.  We
   write it from the main process only (its metrics are already gathered).
6. mmcv 2.1.0's ``build_norm_layer`` answers an unknown norm type (a typo
   such as ``type='SNN'``) with ``KeyError: Cannot find None in registry
   under scope name mmseg``, naming neither the type nor the valid ones.
   The lookup it makes cannot be reached from a registry (a scope's registry
   reads its parents' tables directly), and every toolbox binds the function
   itself at import, so we replace the ``MODELS`` name *inside*
   ``mmcv.cnn.bricks.norm`` with :class:`_NormLookup`: the same registry,
   whose scoped ``get`` raises
   :func:`ssn_norm.registry.unknown_norm_message` (the type, close matches,
   every known norm) instead of returning None.  Only that lookup is
   affected, and only on a miss.
7. A Runner pretty-prints the same config text with yapf about five
   times (log, work-dir and visualizer dumps, message hub, checkpoint meta),
   3 s each for a Mask R-CNN config on a small CPU: 15 s of a 25 s mini run.
   yapf is deterministic, so we memoize mmengine's ``FormatCode`` on the
   text, style and options (:func:`memoized_format_code`): the dumps are
   byte-identical, each text formatted once per process.  Opt-in on top of
   that, not applied by :func:`apply_all`: mmengine's switch for skipping
   yapf, ``format_python_code=False``, is dropped by ``Config.fromfile``
   for ordinary (non-lazy) config files in 0.10.7;
   :func:`plain_text_config` sets it on a loaded config.  The benchmark
   suite uses it for its short runs; the tools keep mmengine's formatted
   dumps.
8. torch 2.13's gloo process group outlives ``destroy_process_group`` once
   a DDP model has used it (its worker threads keep running until the
   process ends), and a worker thread releases a finished collective's
   tensors a moment after the collective returns.  When that release comes
   while the interpreter finalises, the thread cannot take the GIL, is ended
   inside a ``noexcept`` destructor, and ``std::terminate`` aborts a rank
   whose work is done ("terminate called without an active exception",
   SIGABRT; torchrun then fails the launch; seen in about 1 in 12 loaded
   2-process test runs, core dump: ``ProcessGroupGloo::runLoop`` ->
   ``~AsyncBarrierWork`` -> ``~AsyncBroadcastWork`` -> ``decref`` ->
   ``PyThread_exit_thread``).  :func:`exit_tool` ends a tool's process
   after a distributed run without finalising the interpreter: atexit
   handlers run, garbage is collected, output is flushed, then
   ``os._exit``.  Single-process runs exit as usual.
"""
import atexit
import contextlib
import functools
import gc
import importlib.util
import math
import os
import os.path as osp
import pickle
import re
import sys
import tarfile
import threading
import types
import warnings
import zipfile
from typing import (Any, BinaryIO, Callable, Dict, Iterator, List, NoReturn,
                    Optional, Tuple, Union)

_applied = False
#: An entry of torch's weights_only allow-list: an object, or an object and
#: the ``module.name`` it stands for in the pickle.
_SafeGlobal = Union[Callable, Tuple[Callable, str]]

#: Environment variable that opts in to full (code-running) unpickling of
#: checkpoints: ``1`` trusts every checkpoint the process loads through
#: mmengine; unset, empty or ``0`` keeps ``weights_only=True``.
TRUST_CHECKPOINTS_ENV = 'SSN_NORM_TRUST_CHECKPOINTS'

#: ``HistoryBuffer`` statistics that mmengine pickles as
#: ``getattr(HistoryBuffer, name)`` (its ``__getstate__`` saves them).
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that loading it safely does not allow.

    Attributes:
        reason: what was refused, without the advice on how to opt in
            (callers with their own opt-in, e.g. ``--trust-pickle``, add
            theirs).
    """

    def __init__(self, message: str, reason: str = '') -> None:
        super().__init__(message)
        self.reason = reason or message


def trust_checkpoints() -> bool:
    """Whether :data:`TRUST_CHECKPOINTS_ENV` opts in to full unpickling.

    Read at every load, so the opt-in is the user's, per process.

    Raises:
        ValueError: the variable has a value other than ``''``, ``'0'`` or
            ``'1'`` (a typo must not silently pick either behaviour).
    """
    value = os.environ.get(TRUST_CHECKPOINTS_ENV, '')
    if value not in ('', '0', '1'):
        raise ValueError(
            f'{TRUST_CHECKPOINTS_ENV}={value!r}: expected 1 (unpickle '
            'checkpoints in full; only for files you trust) or 0 / unset '
            '(weights_only loading)')
    return value == '1'


def _history_buffer_method(*args: Any) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling: resolves only
    the statistics methods a ``HistoryBuffer`` pickles, nothing else."""
    from mmengine.logging.history_buffer import HistoryBuffer
    if (len(args) != 2 or args[0] is not HistoryBuffer
            or args[1] not in _HISTORY_BUFFER_STATISTICS):
        shown = ', '.join(map(repr, args))
        raise UntrustedCheckpointError(
            f'refused getattr({shown}) while unpickling: only '
            f'HistoryBuffer.{{{", ".join(_HISTORY_BUFFER_STATISTICS)}}} are '
            'allowed')
    return getattr(HistoryBuffer, args[1])


# ---------------------------------------------------------- numpy values
# numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` followed
# by a BUILD of ``(1, shape, dtype, is_fortran, raw bytes)``, a dtype as
# ``dtype(code, align, copy)`` followed by a BUILD of its state, and a
# scalar as ``scalar(dtype, raw bytes)``.  Letting torch's weights_only
# unpickler run numpy's own functions is not safe: a dtype's state sets its
# flags, so a forged file can turn the object dtype's flags to 0 (numpy then
# copies raw bytes into an object array, whose elements are read as
# pointers) or give a float dtype the flags of one that holds references.
# Those names are therefore bound to the stand-ins below, which build only
# plain numeric values (booleans, integers, floats, complex numbers) from
# checked states; every stand-in left in the loaded object is replaced by
# the value it built (:func:`_resolve_numpy`).  No numpy function runs on
# anything from the file before it is checked.

#: ``dtype.kind`` of the numpy values a checkpoint may hold.
_NUMERIC_KINDS = 'biufc'
_loading = threading.local()


def _refuse(what: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f'refused {what} while unpickling: only arrays, scalars and dtypes '
        'of booleans, integers, floats and complex numbers are allowed')


class _Pickled:
    """A numpy value being unpickled: made by the pickle's REDUCE (or
    NEWOBJ), filled by its BUILD; :attr:`value` is the checked result."""

    def __new__(cls, *args: Any) -> '_Pickled':
        made = super().__new__(cls)
        made.value = None
        # Every stand-in must end up replaced (see _resolve_numpy).
        getattr(_loading, 'made', []).append(made)
        return made


class _PickledDtype(_Pickled):
    """Stands in for ``numpy.dtype`` while unpickling."""

    def __init__(self,
                 code: Any = None,
                 align: Any = False,
                 copy: Any = True) -> None:
        import numpy as np
        if not (isinstance(code, str)
                and re.fullmatch(r'[biufc]\d{1,2}', code)):
            raise _refuse(f'the dtype {code!r}')
        self.code = code
        self.dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        # numpy's state of a plain dtype: version 3, the byte order, no
        # subarray, names or fields, sizes -1 (not flexible) and flags 0.
        if (getattr(self, 'code', None) is None
                or not isinstance(state, tuple) or len(state) != 8
                or state[0] != 3 or state[1] not in ('<', '>', '|', '=')
                or state[2:] != (None, None, None, -1, -1, 0)):
            raise _refuse(f'the dtype state {state!r}')
        self.value = self.dtype.newbyteorder(state[1])


def _checked_dtype(dtype: Any) -> Any:
    if not isinstance(dtype, _PickledDtype) or dtype.value is None:
        raise _refuse(f'{dtype!r} as a dtype')
    return dtype.value


class _PickledArray(_Pickled):
    """Stands in for ``numpy.core.multiarray._reconstruct``: an array."""

    def __init__(self,
                 subtype: Any = None,
                 shape: Any = None,
                 code: Any = None) -> None:
        if subtype is not _ndarray:
            raise _refuse(f'an array of type {subtype!r}')

    def __setstate__(self, state: Any) -> None:
        import numpy as np
        if not isinstance(state, tuple) or len(state) != 5:
            raise _refuse(f'the array state {state!r:.80}')
        version, shape, dtype, fortran, raw = state
        dtype = _checked_dtype(dtype)
        if (version != 1 or not isinstance(shape, tuple)
                or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(fortran, bool) or not isinstance(raw, bytes)
                or len(raw) != math.prod(shape) * dtype.itemsize):
            raise _refuse(f'the array state {state!r:.80}')
        order = 'F' if fortran else 'C'
        self.value = np.array(
            np.frombuffer(raw, dtype).reshape(shape, order=order), order=order)


def _ndarray(*args: Any) -> None:
    """Stands in for ``numpy.ndarray``: only an argument of
    :class:`_PickledArray`, never called."""
    raise _refuse('numpy.ndarray(...)')


def _scalar(dtype: Any, raw: Any) -> Any:
    """Stands in for ``numpy.core.multiarray.scalar``."""
    import numpy as np
    dtype = _checked_dtype(dtype)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise _refuse(f'the {dtype} scalar {raw!r:.40}')
    return np.frombuffer(raw, dtype)[0]


def _resolve_numpy(obj: Any, made: List[_Pickled]) -> Any:
    """``obj`` with every numpy stand-in replaced by its value, in place
    where the container is mutable.

    Walks dicts, lists, tuples, sets and the ``__dict__`` of other objects
    (a ``HistoryBuffer``).

    Raises:
        UntrustedCheckpointError: a stand-in was never built, or an array
            sits where the walk does not reach (e.g. a dict key).
    """
    if not made:
        return obj
    done: Dict[int, Any] = {}
    replaced = set()

    def resolve(item: Any) -> Any:
        if id(item) in done:
            return done[id(item)]
        if isinstance(item, _Pickled):
            if item.value is None:
                raise _refuse(f'an incomplete {type(item).__name__}')
            replaced.add(id(item))
            done[id(item)] = item.value
            return item.value
        done[id(item)] = item  # cycles end here
        if isinstance(item, dict):
            for key, value in item.items():
                item[key] = resolve(value)
        elif isinstance(item, list):
            item[:] = [resolve(value) for value in item]
        elif isinstance(item, (tuple, set, frozenset)):
            values = [resolve(value) for value in item]
            if any(a is not b for a, b in zip(values, item)):
                rebuilt = (
                    type(item)(*values)
                    if hasattr(item, '_fields') else type(item)(values))
                done[id(item)] = rebuilt
                return rebuilt
        elif hasattr(item, '__dict__') and not isinstance(item, type):
            for key, value in list(vars(item).items()):
                if resolve(value) is not value:
                    setattr(item, key, done[id(value)])
        return item

    obj = resolve(obj)
    # A dtype may have been only an argument of an array or scalar; an
    # array stand-in is always part of the result.
    if any(
            id(item) not in replaced for item in made
            if isinstance(item, _PickledArray)):
        raise _refuse('a numpy array where only containers may hold one')
    return obj


def checkpoint_safe_globals() -> List[_SafeGlobal]:
    """The globals, beyond torch's ``weights_only`` defaults, that
    checkpoints written by mmengine's Runner hold; nothing broader.

    Found by saving Runner checkpoints (mmengine 0.10.7, numpy 1.26) and
    listing ``torch.serialization.get_unsafe_globals_in_checkpoint``:

    * ``HistoryBuffer`` (message hub scalars); its pickle stores its
      statistics methods as ``getattr(HistoryBuffer, 'min')`` etc., so
      ``builtins.getattr`` is mapped to :func:`_history_buffer_method`,
      which resolves only those four names on ``HistoryBuffer``;
    * numpy arrays, scalars and dtypes (``HistoryBuffer`` contents, seeds):
      ``numpy.ndarray``, ``numpy.dtype``, ``multiarray._reconstruct`` and
      ``multiarray.scalar`` (numpy 1 ``numpy.core`` and numpy 2
      ``numpy._core`` names), each bound to a stand-in that builds only
      plain numeric values from checked states (see the comment above
      :class:`_Pickled`); numpy's own functions are never allowed.

    ``HistoryBuffer`` is omitted when mmengine is not installed.
    """
    allowed: List[_SafeGlobal] = [(_ndarray, 'numpy.ndarray'),
                                  (_PickledDtype, 'numpy.dtype')]
    for core in ('numpy.core', 'numpy._core'):
        allowed += [(_PickledArray, f'{core}.multiarray._reconstruct'),
                    (_scalar, f'{core}.multiarray.scalar')]
    if importlib.util.find_spec('mmengine') is not None:
        from mmengine.logging.history_buffer import HistoryBuffer
        allowed += [
            HistoryBuffer, (_history_buffer_method, 'builtins.getattr')
        ]
    return allowed


def _global_name(entry: _SafeGlobal) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


def safe_load(filename: Union[str, BinaryIO],
              map_location: Any = None,
              trust: Optional[bool] = None) -> Any:
    """``torch.load`` that runs no code from the file unless trusted.

    Loads with ``weights_only=True`` and, for this call only, the types of
    :func:`checkpoint_safe_globals`: tensors, containers, numbers, strings,
    numpy values and mmengine's ``HistoryBuffer``, which is what mmengine's
    Runner checkpoints hold; plain state-dict files (torchvision,
    mmpretrain, this project's converter) need only torch's defaults.
    Unpickling a ``HistoryBuffer`` registers statistics methods on its
    class; anything but its own four is rolled back and refused.

    Args:
        filename: path or binary file object, as for ``torch.load``.
        map_location: as for ``torch.load``.
        trust: True unpickles in full (runs any code the file holds; only
            for files you trust), False never does; None (default) asks
            :func:`trust_checkpoints` (``SSN_NORM_TRUST_CHECKPOINTS=1``).

    Raises:
        ValueError: ``filename`` is a path to a file that is no torch
            checkpoint at all (see :func:`checkpoint_format`).
        UntrustedCheckpointError: the file holds other objects; the message
            names the first one and the opt-in.
    """
    import torch
    if isinstance(filename, (str, os.PathLike)):
        _check_is_checkpoint(os.fspath(filename))
    if trust is None:
        trust = trust_checkpoints()
    if trust:
        warnings.warn(
            f'unpickling {filename} in full (weights_only=False) as '
            f'{TRUST_CHECKPOINTS_ENV}=1 or --trust-pickle asked: this runs '
            'any code the file holds')
        return torch.load(
            filename, map_location=map_location, weights_only=False)
    ours = checkpoint_safe_globals()
    present = torch.serialization.get_safe_globals()
    # For this call, our entries replace any of the user's under the same
    # names (a user's numpy.dtype must not shadow the checked stand-in);
    # the user's list is restored afterwards.
    names = {_global_name(entry) for entry in ours}
    kept = [g for g in present if _global_name(g) not in names]
    methods = _statistics_methods()
    before = dict(methods) if methods is not None else None
    _loading.made = []
    try:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(kept + ours)
        checkpoint = torch.load(
            filename, map_location=map_location, weights_only=True)
        checkpoint = _resolve_numpy(checkpoint, _loading.made)
        _check_statistics_methods(methods, before)
    except BaseException as error:
        if methods is not None:  # undo what unpickling registered
            methods.clear()
            methods.update(before)
        if not isinstance(error, pickle.UnpicklingError):
            raise
        reason = (
            error.reason if isinstance(error, UntrustedCheckpointError) else
            _weights_only_reason(error))
        raise UntrustedCheckpointError(
            f'{filename}: refused to unpickle it: {reason}.  Only tensors, '
            'containers, numbers, strings, numeric numpy values and '
            'mmengine\'s HistoryBuffer load without running code.  If you '
            f'trust the file, set {TRUST_CHECKPOINTS_ENV}=1 to unpickle it '
            'in full (this runs any code it holds)',
            reason=reason) from error
    finally:
        del _loading.made
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(present)
    return checkpoint


def _statistics_methods() -> Optional[dict]:
    if importlib.util.find_spec('mmengine') is None:
        return None
    from mmengine.logging.history_buffer import HistoryBuffer
    return HistoryBuffer._statistics_methods


def _check_statistics_methods(methods: Optional[dict],
                              before: Optional[dict]) -> None:
    """Raises if unpickling put anything but HistoryBuffer's own statistics
    into its class-level registry (which ``__setstate__`` updates)."""
    if methods is None:
        return
    from mmengine.logging.history_buffer import HistoryBuffer
    for name, method in methods.items():
        if name in before and method is before[name]:
            continue
        if (name in _HISTORY_BUFFER_STATISTICS
                and method is getattr(HistoryBuffer, name)):
            continue
        raise UntrustedCheckpointError(
            f'a HistoryBuffer would register {method!r} as its {name!r} '
            'statistic; only its own '
            f'{", ".join(_HISTORY_BUFFER_STATISTICS)} are allowed')


def _weights_only_reason(error: Exception) -> str:
    """The part of torch's weights_only error that names the bad object
    (the rest suggests weights_only=False, which we do not)."""
    text = str(error)
    marker = 'WeightsUnpickler error: '
    if marker in text:
        reason = text.split(marker, 1)[1].strip().splitlines()[0]
    else:  # blocked modules: the reason is a paragraph of its own
        paragraphs = [p.strip() for p in text.split('\n\n') if p.strip()]
        reason = next((p for p in paragraphs
                       if not p.startswith(('Weights only load failed',
                                            'Check the documentation'))),
                      text.strip())
    return reason.split('. Please use')[0].rstrip('.')


def checkpoint_format(path: str) -> Optional[str]:
    """``'zip'`` (``torch.save`` since torch 1.6), ``'tar'`` (torch < 0.4),
    ``'pickle'`` (legacy ``torch.save``, pickle protocol >= 2) or None:
    the file is no checkpoint ``torch.load`` could read."""
    if zipfile.is_zipfile(path):
        return 'zip'
    if tarfile.is_tarfile(path):
        return 'tar'
    with open(path, 'rb') as file:
        head = file.read(2)
    # Pickle protocol >= 2 starts with the PROTO opcode and its version.
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return 'pickle'
    return None


def _check_is_checkpoint(path: str) -> None:
    if checkpoint_format(path) is None:
        with open(path, 'rb') as file:
            head = file.read(16)
        raise ValueError(
            f'{path}: not a PyTorch checkpoint (neither a zip-based '
            'torch.save file nor a legacy torch pickle; it starts with '
            f'{head!r})')


def _patch_mmengine_checkpoint_loading() -> None:
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename: str, map_location: Any = None) -> Any:
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return safe_load(filename, map_location=map_location)

    CheckpointLoader.register_scheme(prefixes='', force=True)(load_from_local)


def _patch_mmengine_config_metainfo() -> None:
    from mmengine.config import utils
    if getattr(utils._get_cfg_metainfo, '_ssn_norm_cached', False):
        return

    @functools.lru_cache(maxsize=None)
    def metainfo_index(package_path: str) -> dict:
        index = utils.load(osp.join(package_path, '.mim', 'model-index.yml'))
        cfg_dict = dict()
        for meta_path in index['Import']:
            meta = utils.load(osp.join(package_path, '.mim', meta_path))
            for model_cfg in meta['Models']:
                if 'Config' in model_cfg:
                    # As upstream: the first entry of a config wins.
                    cfg_dict.setdefault(model_cfg['Config'].partition('/')[-1],
                                        model_cfg)
        return cfg_dict

    def get_cfg_metainfo(package_path: str, cfg_path: str) -> dict:
        cfg_dict = metainfo_index(package_path)
        if cfg_path not in cfg_dict:
            raise ValueError(f'Expected configs: {cfg_dict.keys()}, but got '
                             f'{cfg_path}')
        return cfg_dict[cfg_path]

    get_cfg_metainfo._ssn_norm_cached = True
    utils._get_cfg_metainfo = get_cfg_metainfo


def memoized_format_code(format_code: Callable) -> Callable:
    """``format_code`` (yapf's ``FormatCode``) answering a repeated call
    (same text, style and options) from a cache: the same result, computed
    once.  A style that is not a flat dict is passed through uncached."""

    @functools.lru_cache(maxsize=32)
    def formatted(text: str, style: tuple, options: tuple) -> tuple:
        return format_code(text, style_config=dict(style), **dict(options))

    def memoized(text, style_config=None, **options):
        try:
            key = (tuple(sorted(style_config.items())),
                   tuple(sorted(options.items())))
            hash(key)
        except (AttributeError, TypeError):
            return format_code(text, style_config=style_config, **options)
        return formatted(text, *key)

    memoized._ssn_norm_memoized = True
    return memoized


def _patch_mmengine_config_formatting() -> None:
    from mmengine.config import config
    if not getattr(config.FormatCode, '_ssn_norm_memoized', False):
        config.FormatCode = memoized_format_code(config.FormatCode)


def _patch_mmengine_test_metrics_dump() -> None:
    from mmengine.dist import is_main_process
    from mmengine.fileio import dump
    from mmengine.hooks import LoggerHook
    if getattr(LoggerHook.after_test_epoch, '_ssn_norm_main_only', False):
        return

    def after_test_epoch(self, runner, metrics=None) -> None:
        tag, log_str = runner.log_processor.get_log_after_epoch(
            runner, len(runner.test_dataloader), 'test', with_non_scalar=True)
        runner.logger.info(log_str)
        if is_main_process():
            dump(
                self._process_tags(tag),
                osp.join(runner.log_dir, self.json_log_path))

    after_test_epoch._ssn_norm_main_only = True
    LoggerHook.after_test_epoch = after_test_epoch


class _MissingDRN:
    """Placeholder for mmaction2's DRN, missing from the 1.2.0 wheel."""

    def __init__(self, *args, **kwargs):
        raise ImportError(
            'DRN is not shipped in the mmaction2 1.2.0 wheel '
            '(open-mmlab/mmaction2#2714); install mmaction2 from source to '
            'use it.')


def _patch_mmaction_missing_drn() -> None:
    name = 'mmaction.models.localizers.drn'
    if name in sys.modules:
        return
    spec = importlib.util.find_spec('mmaction')
    if spec is None or not spec.submodule_search_locations:
        return
    root = list(spec.submodule_search_locations)[0]
    if osp.isdir(osp.join(root, 'models', 'localizers', 'drn')):
        return  # a source install that has it
    package = types.ModuleType(name)
    package.__path__ = []
    module = types.ModuleType(name + '.drn')
    module.DRN = _MissingDRN
    package.drn = module
    sys.modules[name] = package
    sys.modules[name + '.drn'] = module


class _CheckedGet:
    """A registry whose ``get`` raises for an unknown norm type."""

    def __init__(self, registry) -> None:
        self._registry = registry

    def __getattr__(self, name: str):
        return getattr(self._registry, name)

    def get(self, key):
        found = self._registry.get(key)
        if found is None and isinstance(key, str):
            from .registry import unknown_norm_message
            raise KeyError(unknown_norm_message(key, self._registry))
        return found


class _NormLookup:
    """mmengine's root ``MODELS`` as seen by mmcv's ``build_norm_layer``."""

    def __init__(self, registry) -> None:
        self._registry = registry

    def __getattr__(self, name: str):
        return getattr(self._registry, name)

    @contextlib.contextmanager
    def switch_scope_and_registry(self,
                                  scope: Optional[str]) -> Iterator[object]:
        with self._registry.switch_scope_and_registry(scope) as registry:
            yield _CheckedGet(registry)


def _patch_mmcv_unknown_norm_error() -> None:
    if importlib.util.find_spec('mmcv') is None:
        return
    from mmcv.cnn.bricks import norm
    if not isinstance(norm.MODELS, _NormLookup):
        norm.MODELS = _NormLookup(norm.MODELS)


def plain_text_config(cfg: Any) -> Any:
    """``cfg`` (an mmengine ``Config``) rebuilt to dump without yapf.

    The copy holds the same keys, values, text, file name and environment
    variables; its ``pretty_text`` is mmengine's plain Python text, which
    loads back to the same dict (workaround 7 of this module).
    """
    from mmengine.config import Config
    return Config(
        cfg.to_dict(),
        cfg_text=cfg.text,
        filename=cfg.filename,
        env_variables=cfg.env_variables,
        format_python_code=False)


def exit_tool(status: int) -> NoReturn:
    """Ends the process of a tool with exit status ``status``, as
    ``sys.exit`` would, after its atexit handlers ran and its output is
    flushed.  In a process of a distributed launch (``WORLD_SIZE`` > 1) the
    interpreter is then left with ``os._exit`` instead of being finalised
    (workaround 8); elsewhere it is ``sys.exit(status)``."""
    if int(os.environ.get('WORLD_SIZE') or 1) <= 1:
        sys.exit(status)
    # What finalisation would do that a tool's results depend on: atexit
    # handlers (logging.shutdown among them), finalizers of garbage, and
    # buffered output.
    atexit._run_exitfuncs()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def apply_all() -> None:
    """Apply every workaround whose package is installed; idempotent."""
    global _applied
    if _applied:
        return
    if importlib.util.find_spec('mmengine') is not None:
        warnings.filterwarnings(
            'ignore', message='pkg_resources is deprecated as an API')
        _patch_mmengine_checkpoint_loading()
        _patch_mmengine_config_metainfo()
        _patch_mmengine_config_formatting()
        _patch_mmengine_test_metrics_dump()
    _patch_mmcv_unknown_norm_error()
    _patch_mmaction_missing_drn()
    _applied = True
