"""Evaluation of gsplat2d super-resolution models (installed as ``gsplat2d.eval``).

Modules:
    metrics: Y-channel PSNR/SSIM with border shave and mod-crop (the SR benchmark conventions),
        image loading, pillow bicubic.
    resize: a port of MATLAB ``imresize`` (bicubic, antialiased) -- the literature's bicubic
        baseline and LR maker.
    cli: ``python -m gsplat2d.eval`` / ``gsplat2d test`` -- the brief's validation report and the
        Set5/Set14-style benchmark protocol.
"""
