"""napari dock widgets (Qt)."""
