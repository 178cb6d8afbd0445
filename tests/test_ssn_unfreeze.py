"""Fine-tuning frozen SSN weights: unfreezing, and a selection that follows.

The released SSN ImageNet weights have every layer frozen one-hot.  Clearing
the flags alone re-freezes on the next step; :meth:`SSN.unfreeze` (and the
radius hook's ``unfreeze_at_start``) gives the ratios a defined start from
which they learn again.  The eval-time selection cache follows every
in-place edit of the flags and logits, and ``load_state_dict``.
"""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from _helpers import loader_cfg
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from ssn_norm import SSN, SyncSSN
from ssn_norm.hooks import SparsestMaxRadiusHook


def frozen_ssn(cls=SSN, choice=(2, 1), using_bn=True):
    """A layer as in the released checkpoints: both rows frozen one-hot."""
    torch.manual_seed(0)
    layer = cls(4, using_bn=using_bn).double()
    num = 3 if using_bn else 2
    with torch.no_grad():
        for logits, index in zip((layer.mean_weight, layer.var_weight),
                                 choice):
            logits.copy_(F.one_hot(torch.tensor(index), num))
        layer.mean_fixed.fill_(1)
        layer.var_fixed.fill_(1)
        layer.radius.fill_(1.0)
        if using_bn:
            layer.running_mean.normal_(0, 1)
            layer.running_var.uniform_(0.5, 2)
    return layer


def train_step(layer, lr=0.5):
    torch.manual_seed(1)
    x = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    target = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    layer.train()
    loss = (layer(x) - target).square().mean()
    logits = [layer.mean_weight, layer.var_weight]
    grads = torch.autograd.grad(loss, logits)
    with torch.no_grad():
        for p, g in zip(logits, grads):
            p.sub_(lr * g)
    return grads


def test_clearing_the_flags_alone_refreezes():
    """The problem unfreeze solves: one-hot logits re-freeze at once."""
    layer = frozen_ssn()
    layer.mean_fixed.zero_()
    layer.var_fixed.zero_()
    layer.set_radius(0.0)
    grads = train_step(layer)
    assert layer.frozen.all()
    assert all(g.abs().sum() == 0 for g in grads)


@pytest.mark.parametrize('cls', [SSN, SyncSSN])
def test_unfreeze_uniform_learns_again(cls):
    layer = frozen_ssn(cls)
    layer.unfreeze()
    assert not layer.frozen.any()
    assert float(layer.radius) == 0.0
    mean_ratio, var_ratio = layer.ratios()
    third = torch.full((3, ), 1 / 3, dtype=torch.float64)
    torch.testing.assert_close(mean_ratio, third, rtol=0, atol=1e-15)
    torch.testing.assert_close(var_ratio, third, rtol=0, atol=1e-15)
    before = layer.ratios()
    for _ in range(3):
        grads = train_step(layer)
        assert not layer.frozen.any()
        assert all(g.abs().sum() > 0 for g in grads)
    assert not torch.equal(layer.ratios()[0], before[0])


@pytest.mark.parametrize('using_bn, kept', [(True, 2 / 3), (False, 3 / 4)])
def test_unfreeze_soften_keeps_the_choice_as_the_start(using_bn, kept):
    choice = (2, 1) if using_bn else (0, 1)
    layer = frozen_ssn(choice=choice, using_bn=using_bn)
    layer.unfreeze(logits='soften', radius=0.0)
    num = 3 if using_bn else 2
    for ratio, index in zip(layer.ratios(), choice):
        expected = torch.full((num, ), (1 - kept) / (num - 1),
                              dtype=torch.float64)
        expected[index] = kept
        torch.testing.assert_close(ratio, expected, rtol=0, atol=1e-15)
    grads = train_step(layer)
    assert not layer.frozen.any()
    assert all(g.abs().sum() > 0 for g in grads)


def test_unfreeze_resets_only_the_frozen_rows():
    layer = frozen_ssn()
    learning = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    with torch.no_grad():
        layer.var_weight.copy_(learning)
    layer.var_fixed.zero_()
    layer.unfreeze(radius=0.25)
    assert torch.equal(layer.mean_weight.detach(), torch.zeros(3).double())
    assert torch.equal(layer.var_weight.detach(), learning)
    assert float(layer.radius) == 0.25


def test_unfreeze_rejects_bad_arguments():
    layer = frozen_ssn()
    with pytest.raises(ValueError,
                       match=r"SSN.unfreeze: logits must be one of "
                       r"\('uniform', 'soften'\), got 'zeros'"):
        layer.unfreeze(logits='zeros')
    with pytest.raises(ValueError, match=r'radius must be a finite number'):
        layer.unfreeze(radius=-1.0)
    assert layer.frozen.all()  # nothing changed


# --------------------------------------------------------- selection cache
def fresh_output(layer, x):
    """Eval output of a new layer with ``layer``'s state: no cache."""
    twin = copy.deepcopy(layer)
    twin._selection_cache = None
    return twin.eval()(x)


@pytest.mark.parametrize('edit', ['flags', 'logits', 'unfreeze', 'load'])
def test_eval_selection_follows_buffer_edits(edit):
    """A frozen layer in eval is cached as 'BN for both'; after an edit
    without a train()/eval() toggle it must compute what its state says."""
    layer = frozen_ssn(choice=(2, 2)).eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    bn = F.batch_norm(x, layer.running_mean, layer.running_var,
                      layer.weight, layer.bias, False, 0.0, layer.eps)
    if edit == 'flags':
        # Frozen rows use the arg-max of their logits, whatever they hold.
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor([0.2, 0.1, 0.5]))
            layer.var_weight.copy_(torch.tensor([0.1, 0.3, 0.4]))
        layer.set_radius(0.0)
    torch.testing.assert_close(layer(x), bn)
    if edit == 'flags':
        layer.mean_fixed.zero_()
        layer.var_fixed.zero_()
    elif edit == 'logits':
        with torch.no_grad():
            layer.mean_weight.copy_(torch.tensor([1.0, 0.0, 0.0]))
    elif edit == 'unfreeze':
        layer.unfreeze()
    else:
        layer.load_state_dict(frozen_ssn(choice=(0, 1)).state_dict())
    expected = fresh_output(layer, x)
    assert not torch.allclose(expected, bn)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the hook
def hook_runner(model, iteration):
    logs = []
    return SimpleNamespace(
        model=model,
        iter=iteration,
        max_iters=10,
        logger=SimpleNamespace(info=logs.append, warning=logs.append)), logs


def test_hook_unfreezes_at_the_start_of_a_run():
    model = nn.Sequential(frozen_ssn(), nn.Conv2d(4, 4, 1), frozen_ssn())
    hook = SparsestMaxRadiusHook(
        start_radius=0.1, unfreeze_at_start=True, unfreeze_logits='soften')
    runner, logs = hook_runner(model, 0)
    hook.before_train(runner)
    for layer in (model[0], model[2]):
        assert not layer.frozen.any()
        assert float(layer.radius) == pytest.approx(0.1)
        assert layer.mean_weight.detach().tolist() == [0, 0, 0.5]
    assert logs == ["SparsestMaxRadiusHook: unfroze 2 of 2 SSN layers "
                    "(logits 'soften', radius 0.1)."]


def test_hook_does_not_unfreeze_a_resumed_run_or_by_default():
    model = nn.Sequential(frozen_ssn())
    runner, logs = hook_runner(model, 5)
    SparsestMaxRadiusHook(unfreeze_at_start=True).before_train(runner)
    assert model[0].frozen.all()
    assert 'resumed at iteration 5' in logs[0]
    runner, logs = hook_runner(model, 0)
    SparsestMaxRadiusHook().before_train(runner)
    assert model[0].frozen.all() and logs == []


class TinyData(Dataset):

    def __len__(self):
        return 4

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return dict(inputs=torch.randn(3, 4, 4, generator=generator))


class TinyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = SSN(4)

    def forward(self, inputs, mode='tensor'):
        out = self.norm(self.conv(inputs))
        if mode == 'loss':
            return dict(loss=(out - inputs.mean(1, keepdim=True)).square().
                        mean())
        return out


def test_fine_tuning_a_frozen_checkpoint_with_the_hook(tmp_path):
    """load_from a frozen checkpoint, unfreeze_at_start: the ratios move
    and the layer ends the (short) run unfrozen at a small radius."""
    pretrained = TinyModel()
    pretrained.norm = frozen_ssn().float()
    checkpoint = tmp_path / 'frozen.pth'
    torch.save(dict(state_dict=pretrained.state_dict()), checkpoint)
    runner = Runner(
        model=TinyModel(),
        work_dir=str(tmp_path / 'work'),
        train_dataloader=loader_cfg(TinyData()),
        train_cfg=dict(by_epoch=False, max_iters=3),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5)),
        custom_hooks=[
            dict(
                type='SparsestMaxRadiusHook',
                end_radius=0.1,
                unfreeze_at_start=True)
        ],
        default_hooks=dict(checkpoint=None),
        load_from=str(checkpoint),
        log_level='WARNING')
    runner.train()
    norm = runner.model.norm
    assert not norm.frozen.any()
    mean_ratio, _ = norm.ratios()
    assert not torch.allclose(mean_ratio, torch.full((3, ), 1 / 3))
    assert 0 < float(norm.radius) < 0.1
