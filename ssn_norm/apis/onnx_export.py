"""ONNX export of models with SN / SSN layers (trained or deployed), and
the comparison with onnxruntime.

Needs the ``onnx`` extra (``pip install -e .[onnx]``: ``onnx`` and
``onnxruntime``).  torch's default exporter (``dynamo=True``) needs
``onnxscript`` besides; the TorchScript-based one (``dynamo=False``), used
here, needs ``onnx``.  Its constant folding drops a node of the SN graph
(``onnx.checker`` passes, onnxruntime then refuses the model: "Node input
... is not a graph input"), so it is switched off; onnxruntime folds
constants itself when it loads the model.
"""
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
    torch.onnx.export(
        module, (example, ),
        path,
        dynamo=False,
        do_constant_folding=False,
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
