"""coinvision trainer: segmenter (U-Net) and embedder (metric learning) training with PyTorch."""
