"""Sample generators (MC dropout, ensembles, test-time augmentation), model loading, demo U-Nets.

Turn any torch segmentation model into the dataset store's ``samples`` ``(N, T, L, *S)``::

    from napari_conformal.models import MCDropoutSampler, load_model
    model = load_model("model.pt", factory=MyNet)          # or a TorchScript file, no factory
    samples = MCDropoutSampler(model, n_samples=20, device="auto", seed=0)(images)

Importing this package imports torch.
"""

from napari_conformal.models.demo import (
    DEMO_MODELS,
    build_demo_model,
    demo_model_names,
    load_demo_model,
)
from napari_conformal.models.loading import is_torchscript_file, load_model, load_state_dict, save_state_dict
from napari_conformal.models.sampling import (
    EnsembleSampler,
    MCDropoutSampler,
    SampleGenerator,
    TTASampler,
    ensemble_samples,
    has_dropout,
    mc_dropout_samples,
    quantize_probabilities,
    tta_samples,
)
from napari_conformal.models.unet import UNet

__all__ = [
    "DEMO_MODELS",
    "EnsembleSampler",
    "MCDropoutSampler",
    "SampleGenerator",
    "TTASampler",
    "UNet",
    "build_demo_model",
    "demo_model_names",
    "ensemble_samples",
    "has_dropout",
    "is_torchscript_file",
    "load_demo_model",
    "load_model",
    "load_state_dict",
    "mc_dropout_samples",
    "quantize_probabilities",
    "save_state_dict",
    "tta_samples",
]
