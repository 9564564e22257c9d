"""SO(2) convolution (edge frame) vs e3nn FullyConnectedTensorProduct, forward + backward, same edges.

Both map node features with 80 channels per l (l = 0..4, both parities: 40 + 40) on every edge
to 80 channels per l.  The tensor product couples the features with the edge's spherical harmonics
(l <= 4), the SO(2) path rotates into the edge frame (Wigner-D), applies the per-m linear maps and
rotates back.  Prints the time per call of each and their ratio, measured in the same run.

    python benchmarks/bench_so2.py [--edges 1000] [--channels 80] [--lmax 4] [--threads 1] [--device cpu]
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


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--edges", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=80)
    ap.add_argument("--lmax", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
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
