"""Saves the random number generators in checkpoints so resuming is exact.

mmengine 0.10.7 checkpoints hold the model, optimizer, schedulers and the
seed, but not the state of the global random number generators.  A
resumed run re-seeds them, so the dropout masks (torch), the random
augmentations (numpy, python) and the proposal samplers (torch) of the
iterations after the checkpoint differ from those of an uninterrupted run,
and so do the weights and running statistics it ends with.
:class:`RngStateHook` stores every rank's generator states in the
checkpoint and puts them back exactly where the uninterrupted run had
them.  The states are tensors in a dict of plain names, so the checkpoint
entry loads with ``torch.load(weights_only=True)``.
"""
import random
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch import Tensor

from .sync_norm_stats_hook import checkpoint_due_after_iter

#: Key of the states in an mmengine checkpoint.
CHECKPOINT_KEY = 'rng_states'

# CPython's Mersenne Twister state: version 3 of random.getstate(), 624
# words plus the position.
_PYTHON_STATE_VERSION = 3


def get_rng_states() -> Dict[str, Tensor]:
    """The states of this process's global generators, as tensors.

    Covers torch's CPU generator, the current CUDA device's generator (when
    CUDA is available), numpy's legacy global ``np.random`` generator and
    python's ``random``.  Every value is a CPU tensor whose shape does not
    depend on the state, so the states of several ranks stack.  The numpy
    and python words (< 2**32) are kept as int64 and the cached Gaussians
    as float64, so :func:`set_rng_states` restores them bit for bit.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    if name != 'MT19937':
        raise RuntimeError(f'numpy uses the {name} generator; only MT19937 '
                           'states can be saved')
    version, words, gauss_next = random.getstate()
    if version != _PYTHON_STATE_VERSION:
        raise RuntimeError(f'python random state version {version}; only '
                           f'version {_PYTHON_STATE_VERSION} can be saved')
    states = {
        'torch':
        torch.get_rng_state(),
        'numpy_keys':
        torch.from_numpy(keys.astype(np.int64)),
        'numpy_gauss':
        torch.tensor([pos, has_gauss, cached_gaussian], dtype=torch.float64),
        'python_words':
        torch.tensor(words, dtype=torch.int64),
        'python_gauss':
        torch.tensor([
            gauss_next is not None, 0.0 if gauss_next is None else gauss_next
        ],
                     dtype=torch.float64),
    }
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: Dict[str, Tensor]) -> None:
    """Restore the generators from one rank's :func:`get_rng_states`.

    Raises:
        ValueError: if a state of torch, numpy or python is missing, or
            when the states hold a CUDA generator and CUDA is not
            available here (or the other way round): the run cannot repeat
            the saved one then.
    """
    needed = ('torch', 'numpy_keys', 'numpy_gauss', 'python_words',
              'python_gauss')
    missing = [key for key in needed if key not in states]
    if missing:
        raise ValueError(f'random states lack {", ".join(missing)}; '
                         f'expected the keys {", ".join(needed)} (and cuda '
                         'with CUDA)')
    if ('cuda' in states) != torch.cuda.is_available():
        saved = 'with' if 'cuda' in states else 'without'
        here = 'is' if torch.cuda.is_available() else 'is not'
        raise ValueError(f'the random states were saved {saved} a CUDA '
                         f'generator and CUDA {here} available here')
    pos, has_gauss, cached_gaussian = states['numpy_gauss'].tolist()
    has_next, gauss_next = states['python_gauss'].tolist()
    # Nothing is changed before every state has been read.
    torch_state = states['torch'].cpu().to(torch.uint8)
    numpy_state = ('MT19937',
                   states['numpy_keys'].cpu().numpy().astype(np.uint32),
                   int(pos), int(has_gauss), float(cached_gaussian))
    python_state = (_PYTHON_STATE_VERSION,
                    tuple(int(w) for w in states['python_words'].tolist()),
                    float(gauss_next) if has_next else None)
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    if 'cuda' in states:
        torch.cuda.set_rng_state(states['cuda'].cpu().to(torch.uint8))


def gather_rng_states(
        local: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
    """Every rank's ``local`` states (default: :func:`get_rng_states`),
    stacked along a new first dimension indexed by rank.  Collective: all
    ranks must call it."""
    if local is None:
        local = get_rng_states()
    return {
        key: torch.stack([state.cpu() for state in all_gather(value)])
        for key, value in sorted(local.items())
    }


def rank_rng_states(gathered: Dict[str, Tensor], rank: int,
                    world_size: int) -> Dict[str, Tensor]:
    """Rank ``rank``'s states from :func:`gather_rng_states`'s output.

    Raises:
        ValueError: if the states were saved by a different number of
            ranks (each rank's generators can then not be matched to one),
            or if they are not stacked alike.
    """
    sizes = {key: value.shape[0] for key, value in gathered.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f'random states of unequal rank counts: {sizes}')
    saved = next(iter(sizes.values()))
    if saved != world_size:
        raise ValueError(f'the random states were saved by {saved} ranks, '
                         f'this run has {world_size}; resume with '
                         f'{saved} processes to repeat it exactly')
    return {key: value[rank] for key, value in gathered.items()}


class _RestoreBeforeBatch:
    """Proxy of an iteration-based loop's data iterator.

    Passes ``skip`` batches through, then calls ``restore`` right before
    the next batch is drawn and puts the plain iterator back.
    """

    def __init__(self, loop, skip: int, restore: Callable[[], None]) -> None:
        self._loop = loop
        self._inner = loop.dataloader_iterator
        self._remaining = skip
        self._restore = restore

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        if self._remaining == 0:
            self._loop.dataloader_iterator = self._inner
            self._restore()
        else:
            self._remaining -= 1
        return next(self._inner)


@HOOKS.register_module()
class RngStateHook(Hook):
    """Makes a resumed run draw the random numbers an uninterrupted one does.

    * Every rank's generator states (:func:`get_rng_states`) are gathered
      where all ranks pass before a checkpoint can be saved (after an
      iteration that an iteration-based CheckpointHook saves at, after each
      epoch, before validation), since ``Runner.save_checkpoint`` and so
      ``before_save_checkpoint`` run on the main process only; that stage
      writes them into ``checkpoint['rng_states']``.
    * On resuming from such a checkpoint each rank restores its own states
      at the point where the uninterrupted run saved them: for an
      iteration-based loop just before the first new batch is drawn, after
      mmengine has replayed the batches already trained on (which consumes
      random numbers of the data pipeline); for an epoch-based loop at the
      start of the next epoch, before its data loader is created.
    * Validation during training leaves the generators as it found them
      (saved before, restored after), so validating after a checkpoint
      does not shift the random numbers of the training that follows: a
      resumed run, which does not repeat that validation, stays in step.

    A checkpoint loaded with ``load_from`` (training from iteration 0) is
    not resumed, and its states are not used.  Resuming from a checkpoint
    without states, or with another number of ranks, logs a warning and
    continues with the re-seeded generators.  Not covered: an epoch-based
    run resumed from a checkpoint saved inside an epoch (mmengine restarts
    that epoch), and, in an epoch-based loop with ``persistent_workers``,
    the generators of the data loader's worker processes, which a resumed
    run seeds afresh while an uninterrupted one carries them on (an
    iteration-based loop replays the trained batches through its workers,
    which brings them to the same state; ``num_workers=0`` draws in this
    process, whose generators are restored).

    Priority ``HIGHEST``: the states are restored before any other hook of
    the same stage draws a random number.
    """

    priority = 'HIGHEST'

    def __init__(self) -> None:
        self._loaded: Optional[dict] = None
        self._pending: Optional[Dict[str, Tensor]] = None
        self._val_states: List[Dict[str, Tensor]] = []
        # All ranks' states, gathered where every rank passes (a collective
        # cannot run in before_save_checkpoint, which only rank 0 calls).
        self._gathered: Optional[Dict[str, Tensor]] = None
        self._val_gathered: List[Dict[str, Tensor]] = []

    def _gather_if_distributed(self) -> Optional[Dict[str, Tensor]]:
        return gather_rng_states() if get_world_size() > 1 else None

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        self._gathered = (
            self._gather_if_distributed()
            if checkpoint_due_after_iter(runner) else None)

    def after_train_epoch(self, runner) -> None:
        self._gathered = self._gather_if_distributed()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # A checkpoint saved during validation (the best one) gets the
        # states training continues with, which after_val restores.
        if self._val_states:
            gathered = self._val_gathered[-1]
            local = self._val_states[-1]
        else:
            gathered, local = self._gathered, None
        if gathered is None:
            if get_world_size() > 1:
                runner.logger.warning(
                    'RngStateHook: no gathered random states for this '
                    'checkpoint (saved outside a training iteration, epoch '
                    'or validation); a resume from it will be re-seeded.')
                return
            gathered = gather_rng_states(local)  # one rank: no collective
        checkpoint[CHECKPOINT_KEY] = gathered

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta') or {}
        self._loaded = dict(
            iter=meta.get('iter'),
            epoch=meta.get('epoch'),
            states=checkpoint.get(CHECKPOINT_KEY))

    def before_train(self, runner) -> None:
        loaded, self._loaded = self._loaded, None
        self._pending = None
        if loaded is None or runner.iter == 0 or (
                loaded['iter'], loaded['epoch']) != (runner.iter,
                                                     runner.epoch):
            return  # not resumed (or load_from): the seeded start is right
        if loaded['states'] is None:
            runner.logger.warning(
                f'RngStateHook: the checkpoint resumed at iteration '
                f'{runner.iter} has no random generator states (saved '
                'without this hook), so the run continues with re-seeded '
                'generators and will not repeat an uninterrupted run '
                'exactly.')
            return
        try:
            self._pending = rank_rng_states(loaded['states'], get_rank(),
                                            get_world_size())
        except ValueError as error:
            runner.logger.warning(
                f'RngStateHook: {error}; the run continues with re-seeded '
                'generators and will not repeat an uninterrupted run '
                'exactly.')

    def before_train_epoch(self, runner) -> None:
        if self._pending is None:
            return
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator'):
            # IterBasedTrainLoop replays runner.iter batches after this
            # stage; the saved states belong after them.
            loop.dataloader_iterator = _RestoreBeforeBatch(
                loop, runner.iter, lambda: self._restore(runner))
        else:
            self._restore(runner)

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch=None) -> None:
        if self._pending is not None:
            # The loop drew its batch without passing through the proxy:
            # restore late rather than never, and say so.
            runner.logger.warning(
                'RngStateHook: the training loop did not replay the trained '
                'batches as IterBasedTrainLoop does; the random states are '
                'restored after the first batch was drawn.')
            self._restore(runner)

    def before_val(self, runner) -> None:
        local = get_rng_states()
        self._val_states.append(local)
        self._val_gathered.append(
            gather_rng_states(local) if get_world_size() > 1 else None)

    def after_val(self, runner) -> None:
        if self._val_states:
            self._val_gathered.pop()
            set_rng_states(self._val_states.pop())

    def _restore(self, runner) -> None:
        states, self._pending = self._pending, None
        if states is None:
            return
        try:
            set_rng_states(states)
        except ValueError as error:
            runner.logger.warning(
                f'RngStateHook: {error}; the run continues with re-seeded '
                'generators and will not repeat an uninterrupted run '
                'exactly.')
            return
        runner.logger.info(
            'RngStateHook: restored the random generator states saved at '
            f'iteration {runner.iter}.')
