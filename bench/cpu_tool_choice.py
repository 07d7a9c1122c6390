"""Evidence for the CPU tool (docs/design.md, "Why numba"): the forward rasterization of one
field three ways on this machine, in one process.

    python bench/cpu_tool_choice.py --out bench/results/cpu-tool-choice-<machine>.json

The field: the shipped default (feature) model's encoding of a 256 x 256 photo crop, rendered at
x4 (1024 x 1024, 67,600 Gaussians, C = 16, sum mode). Timed: the torch backend's forward stage
(restructured torch: tile-vectorised blocks), the same function under ``torch.compile`` (inductor,
needs a C++ compiler at run time; first call = compile), and the numba backend's forward. Minimum
of 3 calls each after the first; outputs compared with the torch backend's.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cpu_before_after import _best, _photo, _tensor  # the same input photo and timer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from gsplat2d.backends import numba_backend, torch_backend
    from gsplat2d.sr import load_model
    from gsplat2d.sr.rendering import encode_image

    m = load_model("feature").eval()
    field = encode_image(m, _tensor(_photo().crop((100, 30, 356, 286))))
    W = 1024
    means, conics = field.to_pixels(W, W)
    mq = [t[None].contiguous() for t in (means, conics, field.colors, field.opacities)]
    binning = torch_backend.bin_gaussians(mq[0], mq[1], mq[3], W, W, 16)

    def eager():
        with torch.no_grad():
            return torch_backend.rasterize_fwd(mq[0], mq[1], mq[2], mq[3], None, binning, W, W, 16, "sum")

    out = {"gaussians": field.num_gaussians, "channels": field.channels, "size": W,
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    ref = eager()
    out["torch_eager_s"] = _best(eager, 3)

    compiled = torch.compile(torch_backend.rasterize_fwd, dynamic=True)

    def comp():
        with torch.no_grad():
            return compiled(mq[0], mq[1], mq[2], mq[3], None, binning, W, W, 16, "sum")

    try:
        t0 = time.perf_counter()
        r = comp()
        out["torch_compile_first_call_s"] = time.perf_counter() - t0
        out["torch_compile_s"] = _best(comp, 3)
        out["torch_compile_max_abs_diff"] = float((r[0] - ref[0]).abs().max())
        expl = torch._dynamo.explain(torch_backend.rasterize_fwd)(mq[0], mq[1], mq[2], mq[3], None, binning,
                                                                   W, W, 16, "sum")
        out["torch_compile_graph_breaks"] = expl.graph_break_count
    except Exception as e:  # no C++ compiler, or an inductor failure: that is evidence too
        out["torch_compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"

    nb = numba_backend.bin_gaussians(mq[0], mq[1], mq[3], W, W, 16)

    def nfwd():
        return numba_backend.rasterize_fwd(mq[2], None, nb, W, W, 16, "sum")

    r = nfwd()
    out["numba_s"] = _best(nfwd, 3)
    out["numba_max_abs_diff"] = float((r[0] - ref[0]).abs().max())
    out["numba_warm_up_s"] = numba_backend.warm_up()  # everything from the on-disk cache here
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
