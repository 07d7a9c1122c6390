"""Bytes the autograd graph holds for backward during one SR training step (feature and colour
models, batch 8, LR 48 -> HR 144), per backend: everything packed by saved-tensor hooks, unique
storages counted once; the rasterizer Functions' own share separately."""
import sys, json, torch
from gsplat2d.sr.model import load_model
import gsplat2d.backends.numba_function as nf, gsplat2d.backends.torch_function as tf, gsplat2d.backends.triton_function as trf

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
    # the rasterizer Function's saved tensors: find the node
    fn = sr.grad_fn
    stack, rast = [fn], 0
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

out = {}
for name in ("feature", "tiny"):
    for backend in sys.argv[1:]:
        out[f"{name}-{backend}"] = step_bytes(name, backend)
        print(name, backend, "graph saved %.1f MB, rasterizer saved %.2f MB" % (out[f"{name}-{backend}"][0] / 1e6, out[f"{name}-{backend}"][1] / 1e6), flush=True)
