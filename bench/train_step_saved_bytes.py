"""Bytes the autograd graph holds for backward during one SR training step (feature and colour
models, batch 8, LR 48 -> HR 144), per backend: everything packed by saved-tensor hooks, unique
storages counted once; the rasterizer Functions' own share separately."""
import sys

import torch

from gsplat2d.sr.model import load_model


def step_bytes(name, backend):
    m = load_model(name).train()
    g = torch.Generator().manual_seed(0)
    lr = torch.rand(8, 3, 48, 48, generator=g)
    seen = {}
    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sr = m(lr, (144, 144), backend=backend)
    total = sum(seen.values())
    # the rasterizer Function's own saved tensors: walk the graph to its node
    stack, rast = [sr.grad_fn], 0
    visited = set()
    while stack:
        f = stack.pop()
        if f is None or id(f) in visited: continue
        visited.add(id(f))
        if type(f).__name__.startswith("Rasterize"):
            for t in f.saved_tensors:
                if t is not None: rast += t.untyped_storage().nbytes()
        stack += [n for n, _ in f.next_functions]
    sr.sum().backward()
    return total, rast

if __name__ == "__main__":
    for name in ("feature", "colour"):
        for backend in sys.argv[1:] or ["numba", "torch"]:
            total, rast = step_bytes(name, backend)
            print(f"{name} {backend}: graph saved {total / 1e6:.1f} MB, rasterizer saved {rast / 1e6:.2f} MB", flush=True)
