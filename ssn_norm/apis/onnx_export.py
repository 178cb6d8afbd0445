"""ONNX export of models with SN / SSN layers (trained or deployed), and
the comparison with onnxruntime.

Needs the ``onnx`` extra (``pip install -e .[onnx]``: ``onnx`` and
``onnxruntime``).  torch's default exporter (``dynamo=True``) needs
``onnxscript`` besides; the TorchScript-based one (``dynamo=False``), used
here, needs ``onnx``.

SN, SSN and the deployed ``SwitchedNorm`` take their per-(sample,
channel) moments from ``torch.native_layer_norm``, whose mean and
inverse-std outputs that exporter's own symbolic writes wrongly: a graph
``onnx.checker`` accepts and onnxruntime refuses ("Node input ... is not a
graph input") or runs with O(1) errors, and only for a fixed batch size.
:func:`export_onnx` exports them with :func:`_native_layer_norm` instead,
for the duration of the call.
"""
import contextlib
from typing import List, Sequence

import numpy as np
import torch
from torch import nn

#: The opset exported: every op of SN, SSN and the deployed modules.
OPSET = 17


def _flat(output) -> List[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat(item)]
    raise TypeError(f'cannot export an output of type {type(output)}; '
                    'export a module that returns tensors (e.g. the '
                    'backbone)')


def _native_layer_norm(g, x, normalized_shape, weight, bias, eps):
    """``aten::native_layer_norm`` as ONNX ops: ``(out, mean, rstd)``
    over the last ``len(normalized_shape)`` axes (a traced shape may stand
    in the list: only its length is read)."""
    from torch.onnx import symbolic_helper as helper
    axes = list(range(-len(helper._unpack_list(normalized_shape)), 0))
    mean = g.op('ReduceMean', x, axes_i=axes, keepdims_i=1)
    centred = g.op('Sub', x, mean)
    var = g.op(
        'ReduceMean', g.op('Mul', centred, centred), axes_i=axes, keepdims_i=1)
    eps = g.op(
        'Constant', value_t=torch.tensor(helper._get_const(eps, 'f', 'eps')))
    rstd = g.op('Reciprocal', g.op('Sqrt', g.op('Add', var, eps)))
    out = g.op('Mul', centred, rstd)
    if not helper._is_none(weight):
        out = g.op('Mul', out, weight)
    if not helper._is_none(bias):
        out = g.op('Add', out, bias)
    return out, mean, rstd


@contextlib.contextmanager
def _faithful_layer_norm():
    name = 'aten::native_layer_norm'
    torch.onnx.register_custom_op_symbolic(name, _native_layer_norm, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, OPSET)


def export_onnx(module: nn.Module,
                example: torch.Tensor,
                path: str,
                dynamic_batch: bool = True) -> List[str]:
    """Writes ``module`` (put in eval mode) traced on ``example`` to
    ``path``; returns the output names (``output0``, ...).

    The input is named ``input``; with ``dynamic_batch`` its first
    dimension is free (SN's batch statistics are not used in eval mode,
    so the batch size does not change the graph).
    """
    module.eval()
    with torch.no_grad():
        names = [f'output{i}' for i in range(len(_flat(module(example))))]
    axes = {'input': {0: 'batch'}} if dynamic_batch else None
    if axes:
        axes.update({name: {0: 'batch'} for name in names})
    with _faithful_layer_norm():
        torch.onnx.export(
            module, (example, ),
            path,
            dynamo=False,
            input_names=['input'],
            output_names=names,
            dynamic_axes=axes,
            opset_version=OPSET)
    return names


def compare_onnx(path: str, module: nn.Module,
                 inputs: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference between ``module`` (eval mode) and
    the ONNX model of ``path`` run by onnxruntime on the CPU, over every
    output of every input in ``inputs``, relative to the largest absolute
    output of ``module`` (float32 rounding grows with the outputs)."""
    import onnx
    import onnxruntime
    onnx.checker.check_model(onnx.load(path))
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    module.eval()
    worst = scale = 0.
    for tensor in inputs:
        with torch.no_grad():
            expected = _flat(module(tensor))
        got = session.run(None, {'input': tensor.numpy()})
        for ref, out in zip(expected, got):
            worst = max(worst, float(np.abs(ref.numpy() - out).max()))
            scale = max(scale, float(ref.abs().max()))
    return worst / scale if scale else worst
