"""Image fitting (GaussianImage-style): optimise N Gaussians to one image and store them in a
compact ``.g2d`` file (:mod:`.fit`; the ``gsplat2d fit`` command)."""
