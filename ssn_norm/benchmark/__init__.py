"""Cost of SN / SSN next to BN, GN, IN and LN: layers and whole models.

The library behind ``tools/benchmark_norms.py``, one module a job:
:mod:`.timing` (interleaved timing, peak memory), :mod:`.layers` (the
normalisers and shapes compared), :mod:`.models` (one training step of
upstream models with their norms swapped) and :mod:`.report` (markdown).
Every case runs on a device given by name (``'cpu'`` by default, ``'cuda'``
where present), so the same command measures a GPU.
"""
from .layers import (LAYER_NORMS, LAYER_SHAPES, LayerCase, LayerResult,
                     benchmark_layers, build_norm, frozen_ssn)
from .models import (MODEL_TASKS, ModelResult, ModelTask, benchmark_models,
                     build_model_case)
from .report import layer_table, model_table
from .timing import (CLOCKS, Timing, clock_reader, peak_memory_bytes,
                     resolve_device, time_interleaved)

__all__ = [
    'CLOCKS', 'LAYER_NORMS', 'LAYER_SHAPES', 'MODEL_TASKS', 'LayerCase',
    'LayerResult', 'ModelResult', 'ModelTask', 'Timing', 'benchmark_layers',
    'benchmark_models', 'build_model_case', 'build_norm', 'frozen_ssn',
    'clock_reader', 'layer_table', 'model_table', 'peak_memory_bytes',
    'resolve_device', 'time_interleaved'
]
