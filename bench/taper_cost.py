"""numba: sum vs sum_taper forward (and fwd+bwd) on the default model's x4 field of a 256 px crop, interleaved."""
import time, statistics, torch, numpy as np
from PIL import Image
import gsplat2d
from gsplat2d.sr.model import load_model
from gsplat2d.sr.rendering import encode_image
img = Image.open('/work/main/gsplat2d/assets/kodim23_crop.png').convert('RGB')
lr = torch.from_numpy(np.array(img.resize((256, 256)))).permute(2, 0, 1).float() / 255
m = load_model()
f = encode_image(m, lr)
W = 1024
means, conics = f.to_pixels(W, W)
def fwd(mode):
    with torch.no_grad():
        return gsplat2d.rasterize(means, conics, f.colors, f.opacities, W, W, mode=mode, backend="numba")
def fb(mode):
    c = f.colors.clone().requires_grad_(True); mm = means.clone().requires_grad_(True)
    img, a = gsplat2d.rasterize(mm, conics, c, f.opacities, W, W, mode=mode, backend="numba")
    img.sum().backward()
for mode in ("sum", "sum_taper"): fwd(mode); fb(mode)
t = {k: [] for k in ("fwd-sum", "fwd-sum_taper", "fb-sum", "fb-sum_taper")}
for r in range(7):
    for mode in ("sum", "sum_taper"):
        t0 = time.perf_counter(); fwd(mode); t[f"fwd-{mode}"].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); fb(mode); t[f"fb-{mode}"].append(time.perf_counter() - t0)
for k, v in t.items(): print(k, "median %.1f ms" % (1e3 * statistics.median(v)))
print("taper/sum fwd %.3f, fwd+bwd %.3f" % (statistics.median(t["fwd-sum_taper"]) / statistics.median(t["fwd-sum"]), statistics.median(t["fb-sum_taper"]) / statistics.median(t["fb-sum"])))
