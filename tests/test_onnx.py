"""ONNX export of SN / SSN models and of a deployed model, run by
onnxruntime (the ``onnx`` extra; skipped, with the reason, without it)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.backbones import ResNet

import ssn_norm  # noqa: F401  registers SN / SSN
from ssn_norm.apis.onnx_export import compare_onnx, export_onnx
from ssn_norm.deploy import assert_plain, deploy_switchable_norms
from ssn_norm.utils import sparse_switchable_norms, switchable_norms

REASON = 'needs the onnx extra: pip install -e .[onnx]'
pytest.importorskip('onnx', reason=REASON)
pytest.importorskip('onnxruntime', reason=REASON)


def backbone(norm):
    """A ResNet-18 with trained-looking norms: random affine, statistics
    and (SN) ratio logits; SSN layers frozen one-hot, as training ends."""
    model = ResNet(depth=18, norm_cfg=dict(type=norm), out_indices=(2, 3))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in switchable_norms(model):
            layer.weight.uniform_(0.5, 1.5, generator=generator)
            layer.bias.normal_(0, 0.3, generator=generator)
            layer.running_mean.normal_(0, 0.5, generator=generator)
            layer.running_var.uniform_(0.5, 2, generator=generator)
            layer.mean_weight.normal_(0, 1, generator=generator)
            layer.var_weight.normal_(0, 1, generator=generator)
        for index, (_, layer) in enumerate(sparse_switchable_norms(model)):
            layer.mean_weight.copy_(F.one_hot(torch.tensor(index % 3), 3))
            layer.var_weight.copy_(
                F.one_hot(torch.tensor((index // 3) % 3), 3))
            layer.mean_fixed.fill_(1)
            layer.var_fixed.fill_(1)
    model.eval()
    return model


_GENERATOR = torch.Generator().manual_seed(1)
INPUTS = [
    torch.randn(2, 3, 64, 64, generator=_GENERATOR),
    torch.randn(3, 3, 64, 64, generator=_GENERATOR)
]


@pytest.mark.parametrize('norm', ['SN', 'SSN'])
def test_switchable_model_matches_onnxruntime(tmp_path, norm):
    model = backbone(norm)
    path = str(tmp_path / f'{norm}.onnx')
    assert export_onnx(model, INPUTS[0], path) == ['output0', 'output1']
    # Two batch sizes: the batch dimension is dynamic.
    assert compare_onnx(path, model, INPUTS) < 1e-4
    export_onnx(model, INPUTS[0], path, dynamic_batch=False)
    assert compare_onnx(path, model, INPUTS[:1]) < 1e-4


def test_deployed_model_matches_onnxruntime_and_the_trained_one(tmp_path):
    trained = backbone('SSN')
    deployed = copy.deepcopy(trained)
    deploy_switchable_norms(deployed, check_input=INPUTS[0], atol=1e-4)
    assert_plain(deployed)
    path = str(tmp_path / 'deployed.onnx')
    export_onnx(deployed, INPUTS[0], path)
    assert compare_onnx(path, deployed, INPUTS) < 1e-4
    # The ONNX model of the deployment computes what training left.
    assert compare_onnx(path, trained, INPUTS) < 1e-4
