"""Demo datasets from real data, packaged with the plugin, turned into dataset stores.

* :func:`build_demo_store` — build (or reuse from the cache) the store of a demo dataset: the
  packaged calibration and test images, their ground truth, and T = 20 MC-dropout samples of the
  demo U-Net trained on the separate training part.
* :func:`load_demo_data` — the packaged images, labels and split, without a model.
* :func:`demo_names` — ``["hippocampus-3d", "hippocampus-2d", "brain-mri", "nuclei"]``.

Licences: hippocampus data CC BY-SA 4.0 (MSD Task04), brain slices MNI ICBM152 (permissive with
notice), nuclei BSD-3-Clause (stardist); see ``napari_conformal/data/demo/LICENSE-*.txt`` and
``docs/demo_data.md``.
"""

from napari_conformal.demo_data.build import (
    DEMO_N_SAMPLES,
    DEMO_SEED,
    build_demo_store,
    demo_cache_dir,
    demo_store_path,
)
from napari_conformal.demo_data.catalog import DEMOS, DemoSpec, demo_names, get_demo
from napari_conformal.demo_data.packaged import DemoData, load_demo_data

__all__ = [
    "DEMOS",
    "DEMO_N_SAMPLES",
    "DEMO_SEED",
    "DemoData",
    "DemoSpec",
    "build_demo_store",
    "demo_cache_dir",
    "demo_names",
    "demo_store_path",
    "get_demo",
    "load_demo_data",
]
