"""The benchmark library (ssn_norm.benchmark) and its tool, on every device
present: CPU always, CUDA where this machine has one."""
import pytest
import torch
from _helpers import run_tool

from ssn_norm import benchmark
from ssn_norm.benchmark import (LAYER_NORMS, LayerCase, benchmark_layers,
                                build_norm, frozen_ssn, layer_table,
                                peak_memory_bytes, resolve_device,
                                time_interleaved)


def test_time_interleaved_times_every_case_and_checks_its_arguments():
    calls = {'a': 0, 'b': 0}

    def case(name):

        def fn():
            calls[name] += 1

        return fn

    timings = time_interleaved({name: case(name)
                                for name in calls},
                               repeats=3,
                               min_sample_s=0.0)
    assert set(timings) == {'a', 'b'}
    # 2 warm-up calls, then one call per round (min_sample_s=0).
    assert calls == {'a': 5, 'b': 5}
    assert all(t.median >= 0 and t.repeats == 3 for t in timings.values())
    with pytest.raises(ValueError, match="unknown clock 'gpu'"):
        time_interleaved({'a': lambda: None}, clock='gpu')
    with pytest.raises(ValueError, match='repeats and warmup must be >= 1'):
        time_interleaved({'a': lambda: None}, repeats=0)


def test_resolve_device_names_what_is_missing():
    assert resolve_device('cpu') == torch.device('cpu')
    with pytest.raises(ValueError, match="unknown device 'tpu0'"):
        resolve_device('tpu0')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"0 CUDA device\(s\)"):
            resolve_device('cuda')
    with pytest.raises(ValueError, match='only cpu and cuda'):
        resolve_device('meta')


def test_catalogue():
    with pytest.raises(ValueError, match="unknown norm 'XN'"):
        build_norm('XN', 8)
    assert frozen_ssn(8, 'LN')._selected() == (1, 1)
    assert LAYER_NORMS == ('BN', 'GN', 'IN', 'LN', 'SN', 'SSN')


def test_peak_memory_counts_allocations(device):
    peak = peak_memory_bytes(lambda: torch.empty(1 << 20, device=device),
                             device)
    assert peak is None or peak >= 4 << 20


def test_benchmark_layers_runs_on_the_device(device):
    results = benchmark_layers([LayerCase('tiny', 'x', (2, 32, 4, 4))],
                               LAYER_NORMS,
                               repeats=1,
                               memory=False,
                               device=device)
    assert set(results[0].train) == set(LAYER_NORMS)
    assert set(results[0].frozen) == {
        'IN', 'LN', 'BN', 'SSN[IN]', 'SSN[LN]', 'SSN[BN]'
    }
    table = layer_table(results)
    assert '| SN/BN' in table and 'tiny x' in table


def test_tool_prints_the_tables_and_the_device(monkeypatch, capsys):
    # The default shapes take minutes: one tiny shape of a known family.
    monkeypatch.setattr(benchmark, 'LAYER_SHAPES',
                        (LayerCase('ResNet-50', 'tiny', (2, 8, 3, 3)), ))
    assert run_tool('benchmark_norms', '--families', 'ResNet-50', '--norms',
                    'BN,SN', '--models', 'none', '--repeats', '1',
                    '--no-memory') == 0
    out = capsys.readouterr().out
    assert 'device cpu' in out
    assert '| ResNet-50 tiny | 2×8×3×3 |' in out


@pytest.mark.skipif(
    torch.cuda.is_available(), reason='this machine has a CUDA device')
def test_tool_refuses_a_missing_device():
    with pytest.raises(SystemExit, match="--device: device 'cuda' asked"):
        run_tool('benchmark_norms', '--device', 'cuda', '--models', 'none')
