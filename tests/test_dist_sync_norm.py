"""SyncSN / SyncSSN, DDP and the running-statistics sync on 2 processes.

Two gloo processes on 127.0.0.1 (``torch.multiprocessing.spawn``, free
port) run every scenario once, in a module-scoped fixture, and save what
they computed.  Each test compares that with a single-process reference
computed here from the same inputs: SN / SSN on the concatenated batch, or
per-rank layers run in this process.  float64 keeps the tolerances tight.
"""
import os.path as osp

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _helpers import free_port, gloo_group, once_per_session
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ssn_norm import SN, SSN, SyncSN, SyncSSN, max_radius
from ssn_norm.distributed import sum_over_ranks, sync_running_stats
from ssn_norm.hooks import SyncNormStatsHook
from ssn_norm.ops import is_one_hot

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason='torch.distributed with the gloo backend is not available')

WORLD_SIZE = 2
C, H, W = 4, 3, 5
SPLIT = (3, 5)  # uneven per-rank batch sizes
STEPS = 2
TOL = dict(rtol=1e-9, atol=1e-11)

GROUP_GN = dict(
    momentum=0.1,
    num_groups=2,
    normalizers=('IN', 'LN', 'BN', 'GN'),
    gn_groups=2)
# Per group (rows), as the (3,) logits below: sparse, not one-hot, at
# radius 0.1.
GROUP_MEAN_LOGITS = ((0.5, 0.3, -1.0, -1.0), (-1.0, 0.1, -1.0, 0.5))
GROUP_VAR_LOGITS = ((-0.8, 0.2, 0.6, -1.0), (0.3, -1.0, -1.0, 0.55))

# name -> (synchronised class, reference class, layer kwargs)
LAYER_CASES = {
    'SyncSN': (SyncSN, SN, dict(momentum=0.1)),
    'SyncSSN': (SyncSSN, SSN, dict(momentum=0.1)),
    'SyncSN-cumulative': (SyncSN, SN, dict(using_moving_average=False)),
    'SyncSSN-cumulative': (SyncSSN, SSN, dict(using_moving_average=False)),
    # Group SN (2 channel groups) mixing a GN member (2 groups of 2).
    'SyncSN-group-gn': (SyncSN, SN, GROUP_GN),
    'SyncSSN-group-gn': (SyncSSN, SSN, GROUP_GN),
}
HOOK_BATCH = 4  # equal per-rank batch sizes for the hook scenario
HOOK_SHIFT = 4.0  # rank r's data is shifted by r * HOOK_SHIFT


def rank_slice(rank: int) -> slice:
    start = sum(SPLIT[:rank])
    return slice(start, start + SPLIT[rank])


def make_layer(cls, kwargs, state):
    layer = cls(C, **kwargs).double()
    layer.load_state_dict(state)
    return layer


def make_hook_model() -> nn.ModuleDict:
    return nn.ModuleDict(
        dict(
            sn=SN(C, using_moving_average=False),
            ssn=SSN(C, momentum=0.1),
            bn=nn.BatchNorm2d(C, momentum=0.1),
            sync_sn=SyncSN(C, momentum=0.1))).double()


def run_hook_model(model: nn.ModuleDict, inputs) -> None:
    for x in inputs:
        for layer in model.values():
            layer(x)


def running_stats(model: nn.Module) -> dict:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))
    }


def make_frozen_model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, C, 3, padding=1), SSN(C), nn.ReLU(), nn.Conv2d(C, C, 1),
        SyncSSN(C)).double()


# ----------------------------------------------------------------- workers
def _train_steps(layer, case: dict, rows: slice) -> list:
    """Forward/backward of ``layer`` on ``rows`` of each of the case's
    batches: outputs, input gradients and parameter gradients per step."""
    steps = []
    for x_full, g_full in zip(case['x'], case['g']):
        x = x_full[rows].clone().requires_grad_()
        y = layer(x)
        (y * g_full[rows]).sum().backward()
        steps.append(
            dict(
                y=y.detach(),
                x_grad=x.grad,
                grads={
                    k: p.grad.clone()
                    for k, p in layer.named_parameters()
                }))
        layer.zero_grad()
    return steps


def _layer_scenarios(rank: int, case: dict) -> dict:
    """Forward/backward of each Sync layer on this rank's slice."""
    out = {}
    sl = rank_slice(rank)
    for name, (cls, _, kwargs) in LAYER_CASES.items():
        layer = make_layer(cls, kwargs, case['state'][name])
        steps = _train_steps(layer, case, sl)
        layer.eval()
        with torch.no_grad():
            y_eval = layer(case['x_eval'][sl])
        out[name] = dict(
            steps=steps, stats=running_stats(layer), y_eval=y_eval)

        # The same step under DDP: its gradient all-reduce must be the only
        # reduction of the parameter gradients (no double counting).
        layer = make_layer(cls, kwargs, case['state'][name])
        model = DDP(layer, device_ids=None, broadcast_buffers=False)
        x_full, g_full = case['x'][0], case['g'][0]
        (model(x_full[sl]) * g_full[sl]).sum().backward()
        out[name]['ddp_grads'] = {
            k: p.grad.clone()
            for k, p in layer.named_parameters()
        }
    return out


def _empty_scenario(rank: int, case: dict) -> dict:
    """SyncSN where rank 1 holds no sample at all (e.g. no RoI)."""
    cls, _, kwargs = LAYER_CASES['SyncSN']
    layer = make_layer(cls, kwargs, case['state']['SyncSN'])
    steps = _train_steps(layer, case, slice(None) if rank == 0 else slice(0))
    return dict(steps=steps, stats=running_stats(layer))


def _frozen_scenario(rank: int, case: dict) -> dict:
    """SSN whose ratios freeze at the first step, under DDP without
    ``find_unused_parameters``: a parameter without gradient would raise at
    the next forward."""
    model = make_frozen_model()
    model.load_state_dict(case['frozen_state'])
    ddp = DDP(model, device_ids=None, broadcast_buffers=False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    logit_grads = []
    for x in case['frozen_x']:
        optimizer.zero_grad()
        ddp(x[rank_slice(rank)]).square().mean().backward()
        logit_grads.append({
            k: p.grad.clone()
            for k, p in model.named_parameters()
            if k.endswith(('mean_weight', 'var_weight'))
        })
        optimizer.step()
    return dict(
        logit_grads=logit_grads,
        frozen=[model[1].frozen.clone(), model[4].frozen.clone()],
        state={
            k: v.clone()
            for k, v in model.state_dict().items()
        })


def _hook_scenario(rank: int, case: dict) -> dict:
    """Per-rank statistics before and after ``sync_running_stats``."""
    model = make_hook_model()
    model.load_state_dict(case['hook_state'])
    ddp = DDP(model, device_ids=None, broadcast_buffers=False)
    with torch.no_grad():
        for x in case['hook_x'][rank]:
            for layer in ddp.module.values():
                layer(x)
    before = running_stats(model)
    num_synced = sync_running_stats(ddp)
    return dict(
        before=before, after=running_stats(model), num_synced=num_synced)


def _worker(rank: int, port: int, case_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    with gloo_group(rank, WORLD_SIZE, port):
        case = torch.load(case_file, weights_only=False)
        torch.manual_seed(0)
        results = dict(
            layers=_layer_scenarios(rank, case),
            frozen=_frozen_scenario(rank, case),
            empty=_empty_scenario(rank, case),
            hook=_hook_scenario(rank, case))
        torch.save(results, osp.join(out_dir, f'rank{rank}.pt'))


# ---------------------------------------------------------------- fixtures
def make_case() -> dict:
    gen = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    n = sum(SPLIT)
    case = dict(
        x=[randn(n, C, H, W) * 2 + 1 for _ in range(STEPS)],
        g=[randn(n, C, H, W) for _ in range(STEPS)],
        x_eval=randn(n, C, H, W),
        state={})
    for name, (cls, _, kwargs) in LAYER_CASES.items():
        layer = cls(C, **kwargs).double()
        with torch.no_grad():
            layer.weight.copy_(1 + 0.2 * randn(C))
            layer.bias.copy_(0.2 * randn(C))
            # Sparsemax of these logits is about (0.6, 0.4, 0) and
            # (0, 0.3, 0.7), farther than 0.1 from the centres of their
            # edges, so at radius 0.1 SparsestMax returns it: sparse, not
            # one-hot, with a non-zero gradient (a point pushed out to the
            # radius would be locally constant: zero gradient).
            if layer.num_groups > 1:
                layer.mean_weight.copy_(
                    torch.tensor(GROUP_MEAN_LOGITS) + 0.05 * randn(2, 4))
                layer.var_weight.copy_(
                    torch.tensor(GROUP_VAR_LOGITS) + 0.05 * randn(2, 4))
            else:
                layer.mean_weight.copy_(
                    torch.tensor([0.5, 0.3, -1.0]) + 0.05 * randn(3))
                layer.var_weight.copy_(
                    torch.tensor([-0.8, 0.2, 0.6]) + 0.05 * randn(3))
            if hasattr(layer, 'radius'):
                layer.radius.fill_(0.1)
        case['state'][name] = layer.state_dict()

    frozen = make_frozen_model()
    for module in (frozen[1], frozen[4]):
        module.radius.fill_(max_radius() + 0.1)  # one-hot at once
        with torch.no_grad():
            module.mean_weight.copy_(randn(3))
            module.var_weight.copy_(randn(3))
    case['frozen_state'] = frozen.state_dict()
    case['frozen_x'] = [randn(n, 3, H, W) for _ in range(3)]

    case['hook_state'] = make_hook_model().state_dict()
    case['hook_x'] = [[
        randn(HOOK_BATCH, C, H, W) + rank * HOOK_SHIFT for _ in range(3)
    ] for rank in range(WORLD_SIZE)]
    return case


@pytest.fixture(scope='module')
def case():
    return make_case()


@pytest.fixture(scope='module')
def ranks(case, tmp_path_factory):
    """Results of the two processes, ``[rank0, rank1]``."""

    def produce(folder):
        case_file = str(folder / 'case.pt')
        torch.save(case, case_file)
        mp.spawn(
            _worker,
            args=(free_port(), case_file, str(folder)),
            nprocs=WORLD_SIZE,
            join=True)

    tmp = once_per_session(tmp_path_factory, 'dist_sync_norm', produce)
    return [
        torch.load(tmp / f'rank{r}.pt', weights_only=False)
        for r in range(WORLD_SIZE)
    ]


def reference_run(case: dict, name: str) -> dict:
    """The unsynchronised layer on the concatenated batch, one process."""
    _, ref_cls, kwargs = LAYER_CASES[name]
    layer = make_layer(ref_cls, kwargs, case['state'][name])
    steps = _train_steps(layer, case, slice(None))
    layer.eval()
    with torch.no_grad():
        y_eval = layer(case['x_eval'])
    return dict(steps=steps, stats=running_stats(layer), y_eval=y_eval)


# ------------------------------------------------------------------- tests
@pytest.mark.parametrize('name', list(LAYER_CASES))
def test_sync_layer_equals_reference_on_concatenated_batch(case, ranks, name):
    ref = reference_run(case, name)
    for step, ref_step in enumerate(ref['steps']):
        for rank in range(WORLD_SIZE):
            got = ranks[rank]['layers'][name]['steps'][step]
            sl = rank_slice(rank)
            torch.testing.assert_close(got['y'], ref_step['y'][sl], **TOL)
            torch.testing.assert_close(got['x_grad'], ref_step['x_grad'][sl],
                                       **TOL)
        # Every parameter's gradient, the ratio logits included, is counted
        # once: the per-rank gradients sum to the reference gradient.
        for key, ref_grad in ref_step['grads'].items():
            total = sum(r['layers'][name]['steps'][step]['grads'][key]
                        for r in ranks)
            torch.testing.assert_close(total, ref_grad, **TOL)
    for rank in range(WORLD_SIZE):
        got = ranks[rank]['layers'][name]
        for key, ref_stat in ref['stats'].items():
            torch.testing.assert_close(got['stats'][key], ref_stat, **TOL)
        torch.testing.assert_close(got['y_eval'],
                                   ref['y_eval'][rank_slice(rank)], **TOL)


def test_sync_layer_with_an_empty_rank(case, ranks):
    """A rank without samples neither hangs its peer nor changes its result:
    rank 0 equals SN on its batch alone, rank 1 returns an empty output with
    zero gradients, and both keep the same running statistics."""
    ref = reference_run(case, 'SyncSN')
    for step, ref_step in enumerate(ref['steps']):
        full, empty = (r['empty']['steps'][step] for r in ranks)
        torch.testing.assert_close(full['y'], ref_step['y'], **TOL)
        torch.testing.assert_close(full['x_grad'], ref_step['x_grad'], **TOL)
        for key, ref_grad in ref_step['grads'].items():
            torch.testing.assert_close(full['grads'][key], ref_grad, **TOL)
            assert not empty['grads'][key].any()
        assert empty['y'].shape == (0, ) + ref_step['y'].shape[1:]
    for rank in range(WORLD_SIZE):
        for key, ref_stat in ref['stats'].items():
            torch.testing.assert_close(ranks[rank]['empty']['stats'][key],
                                       ref_stat, **TOL)


@pytest.mark.parametrize('name', list(LAYER_CASES))
def test_scenario_has_nonzero_sparse_logit_gradients(case, name):
    """Pins the scenario: the logit gradients compared above are not 0 and
    the SSN ratios are sparse but not one-hot (not frozen)."""
    ref = reference_run(case, name)
    for key in ('mean_weight', 'var_weight'):
        assert ref['steps'][0]['grads'][key].abs().max() > 1e-3
    layer = make_layer(*LAYER_CASES[name][1:], case['state'][name])
    for ratios in layer.ratios():
        assert not is_one_hot(ratios).any()
        if isinstance(layer, SSN):
            # Every row (channel group) sparse.
            assert (ratios == 0).any(-1).all()


@pytest.mark.parametrize('name', ['SyncSN-group-gn', 'SyncSSN-group-gn'])
def test_sync_group_layer_equals_formula_reference(case, ranks, name):
    """Two processes of a group SN with a GN member against the reference
    written from the formulas (``test_group_sn.reference``) on the
    concatenated batch: outputs, input gradients and the per-rank
    parameter gradients summed."""
    from test_group_sn import reference
    _, ref_cls, kwargs = LAYER_CASES[name]
    layer = make_layer(ref_cls, kwargs, case['state'][name])
    kind = 'SSN' if isinstance(layer, SSN) else 'SN'
    radius = float(layer.radius) if kind == 'SSN' else 0.0
    for step, (x, g) in enumerate(zip(case['x'], case['g'])):
        # The parameters do not change between the steps (no optimiser).
        leaves = [
            t.detach().clone().requires_grad_()
            for t in (x, layer.weight, layer.bias, layer.mean_weight,
                      layer.var_weight)
        ]
        out, _ = reference(*leaves, layer.normalizers, layer.gn_groups,
                           True, None, kind, radius, layer.eps)
        grads = torch.autograd.grad(out, leaves, g)
        for rank in range(WORLD_SIZE):
            got = ranks[rank]['layers'][name]['steps'][step]
            sl = rank_slice(rank)
            torch.testing.assert_close(got['y'], out[sl].detach(), **TOL)
            torch.testing.assert_close(got['x_grad'], grads[0][sl], **TOL)
        for key, want in zip(('weight', 'bias', 'mean_weight', 'var_weight'),
                             grads[1:]):
            total = sum(r['layers'][name]['steps'][step]['grads'][key]
                        for r in ranks)
            torch.testing.assert_close(total, want, **TOL)


@pytest.mark.parametrize('name', list(LAYER_CASES))
def test_ddp_reduces_sync_layer_gradients_once(case, ranks, name):
    """DDP averages the per-rank gradients; a second reduction inside the
    layer's backward would double them."""
    ref = reference_run(case, name)['steps'][0]['grads']
    for rank in range(WORLD_SIZE):
        grads = ranks[rank]['layers'][name]['ddp_grads']
        assert grads.keys() == ref.keys()
        for key, ref_grad in ref.items():
            torch.testing.assert_close(grads[key] * WORLD_SIZE, ref_grad,
                                       **TOL)


def test_frozen_ssn_trains_under_ddp_without_unused_parameters(ranks):
    for result in ranks:
        for frozen in result['frozen']['frozen']:
            assert frozen.tolist() == [True, True]
        # Frozen logits take part in the forward with a zero gradient.
        for step in result['frozen']['logit_grads']:
            assert len(step) == 4
            for grad in step.values():
                assert torch.count_nonzero(grad) == 0
    state0, state1 = (r['frozen']['state'] for r in ranks)
    for key in state0:
        if key.startswith('1.running_'):
            continue  # the plain SSN's statistics are per rank
        assert torch.equal(state0[key], state1[key]), key


def hook_reference_stats(case: dict) -> list:
    """Each rank's statistics, recomputed in this process."""
    stats = []
    for rank in range(WORLD_SIZE):
        model = make_hook_model()
        model.load_state_dict(case['hook_state'])
        with torch.no_grad():
            run_hook_model(model, case['hook_x'][rank])
        stats.append(running_stats(model))
    return stats


def test_sync_running_stats_makes_ranks_agree(ranks):
    after0, after1 = (r['hook']['after'] for r in ranks)
    assert after0.keys() == after1.keys()
    for key in after0:
        assert torch.equal(after0[key], after1[key]), key
    assert [r['hook']['num_synced'] for r in ranks] == [3, 3]


def test_sync_running_stats_equals_sync_sn_for_exact_averages(case, ranks):
    """SN with using_moving_average=False averages batch moments exactly;
    after the sync it equals SN run on both ranks' batches together, i.e.
    what SyncSN computes."""
    ref = SN(C, using_moving_average=False).double()
    with torch.no_grad():
        for x0, x1 in zip(*case['hook_x']):
            ref(torch.cat([x0, x1]))
    got = ranks[0]['hook']['after']
    torch.testing.assert_close(got['sn.running_mean'], ref.running_mean, **TOL)
    torch.testing.assert_close(got['sn.running_var'], ref.running_var, **TOL)
    assert int(got['sn.num_batches_tracked']) == len(case['hook_x'][0])


@pytest.mark.parametrize('prefix', ['ssn', 'bn'])
def test_sync_running_stats_averages_second_moments(case, ranks, prefix):
    """Moving averages become the mixture of the per-rank estimates: mean of
    the means; mean of (variance + mean²) minus the squared mean."""
    per_rank = hook_reference_stats(case)
    for rank in range(WORLD_SIZE):
        before = ranks[rank]['hook']['before']
        for key in (f'{prefix}.running_mean', f'{prefix}.running_var'):
            torch.testing.assert_close(before[key], per_rank[rank][key], **TOL)
    means = torch.stack([s[f'{prefix}.running_mean'] for s in per_rank])
    variances = torch.stack([s[f'{prefix}.running_var'] for s in per_rank])
    mean = means.mean(0)
    var = (variances + means.square()).mean(0) - mean.square()
    got = ranks[0]['hook']['after']
    torch.testing.assert_close(got[f'{prefix}.running_mean'], mean, **TOL)
    torch.testing.assert_close(got[f'{prefix}.running_var'], var, **TOL)
    # The running means differ by about HOOK_SHIFT * (1 - 0.9³) = 1.08;
    # averaging the variances would miss their spread, about 0.29.
    gap = got[f'{prefix}.running_var'] - variances.mean(0)
    assert (gap > 0.2).all()


def test_sync_running_stats_leaves_synchronised_layers_alone(ranks):
    for result in ranks:
        before, after = result['hook']['before'], result['hook']['after']
        for key in ('sync_sn.running_mean', 'sync_sn.running_var'):
            assert torch.equal(before[key], after[key])
    assert torch.equal(ranks[0]['hook']['before']['sync_sn.running_var'],
                       ranks[1]['hook']['before']['sync_sn.running_var'])


# ------------------------------------------------------- single process
def test_sync_running_stats_is_a_no_op_without_process_group():
    assert not dist.is_initialized()
    model = make_hook_model()
    run_hook_model(model, [torch.randn(2, C, H, W, dtype=torch.float64)])
    before = running_stats(model)
    assert sync_running_stats(model) == 0
    after = running_stats(model)
    for key in before:
        assert torch.equal(before[key], after[key])


def test_hook_is_registered_and_runs_before_checkpoint_and_sync_buffers():
    from mmengine.hooks import CheckpointHook, SyncBuffersHook
    from mmengine.registry import HOOKS
    from mmengine.runner.priority import get_priority
    hook = HOOKS.build(dict(type='SyncNormStatsHook'))
    assert isinstance(hook, SyncNormStatsHook)
    assert get_priority(hook.priority) < get_priority(
        SyncBuffersHook.priority) < get_priority(CheckpointHook.priority)


@pytest.mark.parametrize(
    'ckpt_cfg, iteration, due',
    [
        (dict(interval=5, by_epoch=False), 4, True),  # 5th iteration
        (dict(interval=5, by_epoch=False), 5, False),
        (dict(interval=5, by_epoch=False), 9, True),  # last iteration
        (dict(interval=5, by_epoch=False, save_last=False), 8, False),
        (dict(interval=5, by_epoch=False, save_begin=6), 4, False),
        (dict(interval=-1, by_epoch=False, save_last=False), 4, False),
        (dict(interval=1, by_epoch=True), 4, False),  # saves per epoch
    ])
def test_hook_syncs_when_an_iteration_checkpoint_is_saved(
        monkeypatch, ckpt_cfg, iteration, due):
    from types import SimpleNamespace

    from mmengine.hooks import CheckpointHook

    import ssn_norm.hooks.sync_norm_stats_hook as module
    calls = []
    monkeypatch.setattr(module, 'sync_running_stats', calls.append)
    runner = SimpleNamespace(
        model='model',
        hooks=[CheckpointHook(**ckpt_cfg)],
        iter=iteration,
        max_iters=10)
    hook = SyncNormStatsHook()
    hook.after_train_iter(runner, batch_idx=iteration)
    assert calls == (['model'] if due else [])
    # Epoch ends and validations always see merged statistics.
    hook.after_train_epoch(runner)
    hook.before_val_epoch(runner)
    assert calls == (['model'] if due else []) + ['model', 'model']


def test_sum_over_ranks_alone_returns_float64_copies_of_the_inputs():
    values = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    count = torch.tensor([7])
    total, total_count = sum_over_ranks([values, count])
    assert total.dtype == total_count.dtype == torch.float64
    torch.testing.assert_close(total, values.double(), rtol=0, atol=0)
    torch.testing.assert_close(
        total_count, torch.tensor([7.], dtype=torch.float64), rtol=0, atol=0)
    total.add_(1)  # a copy: the caller's tensors stay as they were
    assert values[0, 0] == 0
    with pytest.raises(ValueError, match='at least one tensor, got none'):
        sum_over_ranks([])
