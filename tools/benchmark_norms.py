"""Time BN, GN, IN, LN, SN and SSN side by side; print markdown tables.

Layers: training forward + backward, eval, and eval of SSN frozen one-hot
next to the normaliser it selected, for ResNet-50, FPN and I3D shapes, with
peak memory of the training step.  Models: one training step of Mask R-CNN
R50-FPN, DeepLabV3 R50-D8 and I3D R50 with every norm layer swapped.

Example (the default run, a few minutes on a 2-core CPU)::

    python tools/benchmark_norms.py --out docs/benchmark_run.md

Timings are interleaved medians, so ratios hold on a busy machine better
than absolute times; on a shared machine use ``--threads 1 --clock cpu``.
``--device cuda`` runs the same cases on a GPU (timed with device
synchronisation; peak memory from the CUDA allocator).
"""
import argparse
import os
import platform
import sys
import tempfile
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--families',
        default='ResNet-50,FPN,I3D',
        help='layer shape families (comma separated; "none" to skip)')
    parser.add_argument(
        '--norms',
        default='BN,GN,IN,LN,SN,SSN',
        help='norms for the layer tables')
    parser.add_argument(
        '--models',
        default='mask-rcnn,deeplabv3,i3d',
        help='whole models (comma separated; "none" to skip)')
    parser.add_argument(
        '--model-norms',
        default='BN,GN,SN',
        help='norms for the whole-model table (BN, GN, SN, SSN)')
    parser.add_argument(
        '--repeats', type=int, default=5, help='layer timing rounds')
    parser.add_argument(
        '--model-repeats', type=int, default=3, help='model timing rounds')
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch threads (default: PyTorch default)')
    parser.add_argument(
        '--clock',
        choices=('wall', 'cpu'),
        default='wall',
        help='wall time, or process CPU time (for a shared machine)')
    parser.add_argument(
        '--device',
        default='cpu',
        help='where inputs and models live: cpu (default), cuda, cuda:N')
    parser.add_argument(
        '--backend',
        choices=('auto', 'reference', 'cpp', 'compiled', 'eager'),
        default=None,
        help='SN/SSN path or kernel provider (default: $SSN_NORM_BACKEND '
        'or auto, chosen per call)')
    parser.add_argument(
        '--no-memory',
        action='store_true',
        help='skip peak-memory measurement of the layers')
    parser.add_argument(
        '--model-memory',
        action='store_true',
        help='also measure peak memory of one model step (slow)')
    parser.add_argument(
        '--cold-compile',
        action='store_true',
        help='use an empty inductor cache, so first calls include '
        'compiling from scratch')
    parser.add_argument('--out', help='also write the tables to this file')
    return parser.parse_args(argv)


def _split(value):
    return [] if value.strip().lower() == 'none' else [
        v.strip() for v in value.split(',') if v.strip()
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cold_compile:
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(
            prefix='ssn_norm_inductor_')
    import torch

    from ssn_norm import benchmark
    from ssn_norm.ops import switchable_function

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.backend is not None:
        switchable_function.set_backend(args.backend)
    families = _split(args.families)
    known = {case.family for case in benchmark.LAYER_SHAPES}
    if set(families) - known:
        raise SystemExit(f'unknown --families {sorted(set(families) - known)}'
                         f'; choose from {sorted(known)}')
    norms = _split(args.norms)
    bad = set(norms) - set(benchmark.LAYER_NORMS)
    if bad:
        raise SystemExit(f'unknown --norms {sorted(bad)}; choose from '
                         f'{benchmark.LAYER_NORMS}')
    try:
        device = benchmark.resolve_device(args.device)
    except ValueError as error:
        raise SystemExit(f'--device: {error}') from None
    if device.type == 'cuda' and args.clock != 'wall':
        raise SystemExit('--clock cpu cannot time CUDA kernels; use wall')
    where = (f'{torch.cuda.get_device_name(device)}' if device.type == 'cuda'
             else f'{platform.processor() or platform.machine()}, '
             f'{os.cpu_count()} CPUs')

    def log(msg):
        print(
            f'[{time.strftime("%H:%M:%S")}] {msg}',
            file=sys.stderr,
            flush=True)

    start = time.time()
    parts = [
        '# Normalisation benchmark', '',
        f'- command: `python tools/benchmark_norms.py '
        f'{" ".join(sys.argv[1:] if argv is None else argv)}`',
        f'- torch {torch.__version__}, {torch.get_num_threads()} threads, '
        f'device {device} ({where}), clock: {args.clock}',
        f'- SN/SSN backend: {switchable_function.get_backend()}', ''
    ]
    cases = [c for c in benchmark.LAYER_SHAPES if c.family in families]
    if cases:
        layers = benchmark.benchmark_layers(
            cases,
            norms,
            repeats=args.repeats,
            memory=not args.no_memory,
            clock=args.clock,
            log=log,
            device=args.device)
        parts += [benchmark.layer_table(layers), '']
    tasks = _split(args.models)
    if tasks:
        models = benchmark.benchmark_models(
            tasks,
            _split(args.model_norms),
            repeats=args.model_repeats,
            memory=args.model_memory,
            clock=args.clock,
            log=log,
            device=args.device)
        parts += [benchmark.model_table(models), '']
    parts.append(f'_Total benchmark time: {time.time() - start:.0f} s._')
    text = '\n'.join(parts) + '\n'
    print(text)
    if args.out:
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
