"""Training loops for gsplat2d models (filled in by the super-resolution work)."""
