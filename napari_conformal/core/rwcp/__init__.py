"""RW-CP's pieces: image features, the kNN transition matrix and the random walk.

* :mod:`.features` — feature extractors (EfficientNet-Lite0, DINOv2/v3, multiscale, any callable);
* :mod:`.graph` — the directed cosine kNN graph and its row-stochastic transition matrix;
* :mod:`.diffusion` — ``S ← P S`` on the feature grid, resampled to and from the image grid.

The method itself is :mod:`napari_conformal.core.methods.rwcp`.
"""
