"""Numerical core: numpy/torch only, never Qt or napari."""
