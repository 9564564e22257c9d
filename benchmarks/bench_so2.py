"""SO(2) convolution (edge frame) vs e3nn FullyConnectedTensorProduct, forward + backward, same edges.

Both map node features with 80 channels per l (l = 0..4, both parities: 40 + 40) on every edge
to 80 channels per l.  The tensor product couples the features with the edge's spherical harmonics
(l <= 4), the SO(2) path rotates into the edge frame (Wigner-D), applies the per-m linear maps and
rotates back.  Prints the time per call of each and their ratio, measured in the same run.

    python benchmarks/bench_so2.py [--edges 1000] [--channels 80] [--lmax 4] [--threads 1] [--device cpu]

``--layout-compare`` instead times forward + backward of the earlier per-m SO2Linear / per-l
EquiLinear (reference copies in tests/test_ml_so2_layout.py) against the current ones, at the layer
sizes of the 'small' (channels 16, mmax 2) and 'paper' (channels 80, mmax None) presets: the
message conv (c_in = 3 C, radial modulation), the value conv (C -> C) and an EquiLinear (C -> 2 C).
Reference and new runs alternate (A, B, A, B, ...) in one process; medians are printed.

    python benchmarks/bench_so2.py --layout-compare [--edges 1000] [--repeat 7] [--dtype float32]
"""
from __future__ import annotations

import argparse
import time

import torch


def timeit(fn, repeat, sync):
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t) / repeat


def layout_compare(args):
    import statistics
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from aiida_deeph.ml.so2 import EquiLinear, SO2Linear
    from tests.test_ml_so2_layout import _EquiLinearReference, _SO2LinearReference

    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    E, L = args.edges, args.lmax
    S = (L + 1) ** 2
    cases = []
    for preset, C, mmax in (("small", 16, 2), ("paper", 80, None)):
        # (name, new class, reference class, constructor args, radial modulation)
        cases += [(preset, "SO2 msg", SO2Linear, _SO2LinearReference, (3 * C, C, L, mmax), True),
                  (preset, "SO2 val", SO2Linear, _SO2LinearReference, (C, C, L, mmax), False),
                  (preset, "EquiLin", EquiLinear, _EquiLinearReference, (C, 2 * C, L), False)]
    print(f"device {dev}, threads {torch.get_num_threads()}, edges {E}, lmax {L}, {args.dtype}; ms per forward+backward, "
          f"median of {args.repeat} interleaved repeats x {args.inner} calls")
    print(f"{'preset':6s} {'layer':8s} {'c_in':>5s} {'mmax':>4s} {'reference':>10s} {'new':>9s} {'ratio':>6s}"
          "  max |diff| / max |ref| (output, input and weight gradients)")
    ratios = {}
    for preset, name, new_cls, ref_cls, shape, modulated in cases:
        torch.manual_seed(0)
        ref = ref_cls(*shape).to(device=dev, dtype=dtype)
        new = new_cls(*shape).to(device=dev, dtype=dtype)
        with torch.no_grad():
            if ref.bias is not None:
                ref.bias.normal_()
        new.load_state_dict(ref.state_dict())
        x = torch.randn(E, S, shape[0], dtype=dtype, device=dev, requires_grad=True)
        ins = [x]
        if modulated:
            ins.append(torch.randn(E, ref.num_modulation, dtype=dtype, device=dev, requires_grad=True))
        gy = torch.randn(E, S, shape[1], dtype=dtype, device=dev)

        def step(mod):
            for t in [*ins, *mod.parameters()]:
                t.grad = None
            (mod(*ins) * gy).sum().backward()

        outs = []
        for mod in (ref, new):
            step(mod)
            outs.append([mod(*ins).detach()] + [t.grad.clone() for t in ins]
                        + [p.grad.clone() for p in mod.parameters()])
        diff = max(((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item() for a, b in zip(*outs))
        times = {"ref": [], "new": []}
        for _ in range(args.repeat):
            for key, mod in (("ref", ref), ("new", new)):
                sync()
                t0 = time.perf_counter()
                for _ in range(args.inner):
                    step(mod)
                sync()
                times[key].append((time.perf_counter() - t0) / args.inner)
        tr, tn = statistics.median(times["ref"]), statistics.median(times["new"])
        ratios[(preset, name)] = tr / tn
        print(f"{preset:6s} {name:8s} {shape[0]:5d} {str(shape[3]) if len(shape) > 3 else '-':>4s} "
              f"{tr * 1e3:10.2f} {tn * 1e3:9.2f} {tr / tn:6.2f}  {diff:.1e}")
    return ratios


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=80)
    ap.add_argument("--lmax", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=None, help="timed repeats (default 3; 7 with --layout-compare)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layout-compare", action="store_true",
                    help="reference vs current SO2Linear / EquiLinear, interleaved")
    ap.add_argument("--inner", type=int, default=3, help="calls per timed repeat (--layout-compare)")
    ap.add_argument("--dtype", default="float32", help="--layout-compare dtype (float32 | float64)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.layout_compare:
        args.repeat = args.repeat or 7
        return layout_compare(args)
    args.repeat = args.repeat or 3
    from e3nn import o3

    from aiida_deeph.ml.so2 import SO2Linear, WignerBlocks, rotate, rotate_back

    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    C, L, E = args.channels, args.lmax, args.edges
    h = C // 2
    irreps = o3.Irreps("+".join(f"{h}x{l}{p}" for l in range(L + 1)
                                for p in (("e", "o") if l % 2 == 0 else ("o", "e"))))
    sh_irreps = o3.Irreps.spherical_harmonics(L)
    torch.manual_seed(0)
    vec = torch.randn(E, 3, device=dev)
    x = torch.randn(E, (L + 1) ** 2, C, device=dev, requires_grad=True)

    # ---- SO(2) path
    wig = WignerBlocks(L).to(dev)
    so2 = SO2Linear(C, C, L).to(dev)

    def so2_step():
        D = wig.edge_frame(vec)
        y = rotate_back(D, so2(rotate(D, x)))
        y.square().sum().backward()

    # ---- e3nn tensor product path (same features, flattened in e3nn's layout)
    t0 = time.perf_counter()
    tp = o3.FullyConnectedTensorProduct(irreps, sh_irreps, irreps, shared_weights=True).to(dev)
    build_s = time.perf_counter() - t0
    xf = torch.randn(E, irreps.dim, device=dev, requires_grad=True)

    def tp_step():
        sh = o3.spherical_harmonics(sh_irreps, vec, normalize=True)
        y = tp(xf, sh)
        y.square().sum().backward()

    t_so2 = timeit(so2_step, args.repeat, sync)
    t_tp = timeit(tp_step, args.repeat, sync)
    n_so2 = sum(p.numel() for p in so2.parameters())
    n_tp = tp.weight_numel
    print(f"device {dev}, threads {args.threads}, edges {E}, channels {C} per l, lmax {L}")
    print(f"SO(2) conv  : {t_so2 * 1e3:9.1f} ms fwd+bwd  ({n_so2} weights)")
    print(f"e3nn FCTP   : {t_tp * 1e3:9.1f} ms fwd+bwd  ({n_tp} weights; built in {build_s:.1f} s)")
    print(f"speed-up    : {t_tp / t_so2:9.1f} x")
    return t_tp / t_so2


if __name__ == "__main__":
    main()
