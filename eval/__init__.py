"""Evaluation of gsplat2d super-resolution models (installed as ``gsplat2d.eval``).

Modules:
    metrics: Y-channel PSNR/SSIM with border shave and mod-crop (the SR benchmark conventions),
        image loading, pillow bicubic.
    resize: a port of MATLAB ``imresize`` (bicubic, antialiased) -- the literature's bicubic
        baseline and LR maker.
    cli: ``python -m gsplat2d.eval`` / ``gsplat2d test`` -- the validation report on crops and the
        Set5/Set14-style benchmark protocol.
    demo: ``gsplat2d demo`` -- a bundled photo super-resolved at several scales and scored
        against bicubic.

The applications' layering (checked by ``tests/test_layout.py``): ``gsplat2d.sr`` (models and
rendering) imports no other application; ``gsplat2d.eval`` measures models, so it may import
``sr``; ``gsplat2d.train`` and ``gsplat2d.fitting`` may import both.
"""
