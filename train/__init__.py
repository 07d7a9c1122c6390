"""Training for gsplat2d models. ``gsplat2d.train.data``: the super-resolution training dataset
(random HR crops, on-the-fly PIL-bicubic LR, one scale per batch) and its DataLoader."""
