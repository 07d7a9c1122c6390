"""Evaluation tools for gsplat2d models (filled in by the super-resolution work).

Modules:
    metrics: Y-channel PSNR/SSIM (8-bit quantised, border shave), mod_crop, load_image,
        PIL bicubic_upscale — the SR benchmark conventions.
"""
