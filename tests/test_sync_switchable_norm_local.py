"""SyncSN / SyncSSN in a single process.

Without a process group, or in a group of one, they must be exactly SN /
SSN (mmengine never reverts them).  The synchronised arithmetic is checked
here too by standing in for a second rank: the all-reduce is replaced by
"my packed moments + the other rank's", which is what the real all-reduce
computes; forward, running statistics and each rank's own share of the input
gradient must then equal SN on the concatenated batch.  Real multi-process
runs (with the cross-rank gradient) are in ``test_dist_sync_norm.py``.
"""
import copy

import pytest
import torch
import torch.distributed as dist

from ssn_norm import SN, SSN, SyncSN, SyncSSN
from ssn_norm.distributed import all_reduce_sum, get_world_size
from ssn_norm.layers import sync_switchable_norm
from ssn_norm.ops import moments

PAIRS = [(SyncSN, SN, 0.0), (SyncSSN, SSN, 0.0), (SyncSSN, SSN, 0.4)]


def make_pair(sync_cls, cls, radius, **kwargs):
    plain = cls(4, **kwargs).double()
    with torch.no_grad():
        plain.weight.normal_(1, 0.3)
        plain.bias.normal_(0, 0.3)
        plain.mean_weight.copy_(torch.tensor([0.4, -0.1, 0.2]))
        plain.var_weight.copy_(torch.tensor([-0.3, 0.3, 0.1]))
        if cls is SSN:
            plain.radius.fill_(radius)
    sync = sync_cls(4, **kwargs).double()
    sync.load_state_dict(plain.state_dict())
    return sync, plain


def assert_identical(sync, plain, steps=3):
    for step in range(steps):
        x = torch.randn(3, 4, 5, 5, dtype=torch.float64) + step
        xs = x.clone().requires_grad_()
        xp = x.clone().requires_grad_()
        out_sync, out_plain = sync(xs), plain(xp)
        assert torch.equal(out_sync, out_plain)
        out_sync.square().sum().backward()
        out_plain.square().sum().backward()
        assert torch.equal(xs.grad, xp.grad)
    for (name, a), b in zip(sync.named_parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(sync.named_buffers(), plain.buffers()):
        assert torch.equal(a, b), name
    sync.eval()
    plain.eval()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert torch.equal(sync(x), plain(x))


@pytest.mark.parametrize('sync_cls, cls, radius', PAIRS)
def test_without_process_group_equals_unsynchronised(sync_cls, cls, radius):
    assert not dist.is_initialized()
    assert get_world_size() == 1
    tensor = torch.ones(3)
    assert all_reduce_sum(tensor) is tensor
    assert_identical(*make_pair(sync_cls, cls, radius))


def test_group_of_one_equals_unsynchronised(tmp_path):
    if not dist.is_gloo_available():
        pytest.skip('torch.distributed has no gloo backend in this build')
    store = dist.FileStore(str(tmp_path / 'store'), 1)
    dist.init_process_group('gloo', store=store, rank=0, world_size=1)
    try:
        assert get_world_size() == 1
        for sync_cls, cls, radius in PAIRS:
            assert_identical(*make_pair(sync_cls, cls, radius))
        sync, plain = make_pair(SyncSN, SN, 0.0)
        sync.group = dist.new_group([0])
        assert_identical(sync, plain)
    finally:
        dist.destroy_process_group()


class TwoRankStandIn:
    """Replaces one rank's all-reduces: the forward's (the first call) by
    ``mine + other's`` (a constant), the backward's by ``mine``.

    The backward of a real all-reduce also adds the other rank's gradient
    of the sum; with it left out, each rank's input gradient is that of its
    own loss alone, which the reference below computes the same way.
    """

    def __init__(self, other_packed: torch.Tensor) -> None:
        self.other_packed = other_packed
        self.mine = None

    def __call__(self, tensor, group=None):
        if self.mine is not None:
            return tensor
        self.mine = tensor.detach()
        return tensor + self.other_packed


@pytest.mark.parametrize('sync_cls, cls, radius', PAIRS)
@pytest.mark.parametrize('kwargs', [{}, dict(using_moving_average=False)])
def test_two_ranks_with_uneven_batches_equal_concatenated_batch(
        monkeypatch, sync_cls, cls, radius, kwargs):
    monkeypatch.setattr(
        sync_switchable_norm, 'get_world_size', lambda group=None: 2)
    sync_a, plain = make_pair(sync_cls, cls, radius, **kwargs)
    sync_b = sync_cls(4, **kwargs).double()
    sync_b.load_state_dict(sync_a.state_dict())
    scout = sync_cls(4, **kwargs).double()
    scout.load_state_dict(sync_a.state_dict())
    x = torch.randn(4, 4, 3, 5, dtype=torch.float64) * 2 + 1
    split = [slice(0, 3), slice(3, 4)]  # one sample on the second rank
    inputs = [x[part].clone().requires_grad_() for part in split]

    # Rank B's packed moments, from a scout pass over its batch.
    recorder = TwoRankStandIn(0)
    monkeypatch.setattr(moments, 'all_reduce_sum', recorder)
    scout(inputs[1])
    rank_a = TwoRankStandIn(recorder.mine)
    monkeypatch.setattr(moments, 'all_reduce_sum', rank_a)
    out_a = sync_a(inputs[0])
    monkeypatch.setattr(moments, 'all_reduce_sum', TwoRankStandIn(rank_a.mine))
    out_b = sync_b(inputs[1])
    initial = copy.deepcopy(plain)
    ref = plain(x)
    torch.testing.assert_close(
        torch.cat([out_a, out_b]), ref, atol=1e-12, rtol=0)

    grad_out = torch.randn_like(ref)
    for out, inp, part in zip((out_a, out_b), inputs, split):
        grad, = torch.autograd.grad((out * grad_out[part]).sum(), inp)
        x_ref = x.clone().requires_grad_()
        ref = copy.deepcopy(initial)(x_ref)
        ref_grad, = torch.autograd.grad((ref[part] * grad_out[part]).sum(),
                                        x_ref)
        torch.testing.assert_close(grad, ref_grad[part], atol=1e-11, rtol=0)
    for layer in (sync_a, sync_b):
        torch.testing.assert_close(
            layer.running_mean, plain.running_mean, atol=1e-13, rtol=0)
        torch.testing.assert_close(
            layer.running_var, plain.running_var, atol=1e-13, rtol=0)
