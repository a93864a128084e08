"""A small 2D/3D U-Net with dropout, the architecture of the demo models.

The network standardises each input image itself (zero mean, unit variance per image and channel),
pads the spatial axes to a multiple of ``2**depth`` and crops the output back, so it takes raw
intensities of any size. Dropout layers sit at the bottleneck and after every decoder block but the
full-resolution one, which is where Monte-Carlo dropout (:class:`napari_conformal.models.sampling.MCDropoutSampler`) draws its
samples from. The module is TorchScript-compatible (``torch.jit.script(UNet(...))``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UPCONV = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_CHANNEL_DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}


def _conv_block(ndim: int, c_in: int, c_out: int) -> nn.Sequential:
    """Two (3^d convolution → batch norm → ReLU) layers."""
    conv, norm = _CONV[ndim], _NORM[ndim]
    return nn.Sequential(
        conv(c_in, c_out, kernel_size=3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
        conv(c_out, c_out, kernel_size=3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


def _dropout(ndim: int, p: float, mode: str) -> nn.Module:
    if p == 0.0:
        return nn.Identity()
    return _CHANNEL_DROPOUT[ndim](p) if mode == "channel" else nn.Dropout(p)


class _Up(nn.Module):
    """Decoder stage: transposed convolution ×2, concatenation with the skip, conv block, dropout."""

    def __init__(self, ndim: int, c_in: int, c_out: int, p: float, mode: str) -> None:
        super().__init__()
        self.up = _UPCONV[ndim](c_in, c_out, kernel_size=2, stride=2)
        self.block = _conv_block(ndim, 2 * c_out, c_out)
        self.drop = _dropout(ndim, p, mode)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.drop(self.block(torch.cat([x, skip], dim=1)))


class UNet(nn.Module):
    """U-Net for 2D or 3D segmentation, returning per-class logits.

    Parameters
    ----------
    ndim : {2, 3}
        Number of spatial axes.
    in_channels : int
        Image channels C.
    n_classes : int
        Output classes L (background first); ``softmax`` over axis 1 gives probabilities.
    base_channels : int
        Feature channels of the first level; doubled at every level down.
    depth : int
        Number of 2× down-samplings (≥ 1).
    dropout : float
        Dropout probability in [0, 1) at the bottleneck and after each decoder block except the
        last (full-resolution) one.
    full_resolution_dropout : bool
        Also drop after the full-resolution decoder block. Off by default: channel dropout there
        perturbs every output pixel directly, so MC-dropout samples would vary everywhere instead of
        mostly near structure boundaries.
    dropout_mode : {"channel", "element"}
        ``"channel"`` drops whole feature maps (``nn.Dropout2d/3d``), ``"element"`` single
        activations (``nn.Dropout``).
    standardize : bool
        Standardise each image per channel inside the network (so it takes raw intensities).

    Input ``(B, C, *S)`` float; output ``(B, L, *S)`` logits, for any spatial size S.
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 1,
        n_classes: int = 2,
        *,
        base_channels: int = 16,
        depth: int = 3,
        dropout: float = 0.2,
        dropout_mode: str = "channel",
        full_resolution_dropout: bool = False,
        standardize: bool = True,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("n_classes", n_classes, 1),
            ("base_channels", base_channels, 1),
            ("depth", depth, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if dropout_mode not in ("channel", "element"):
            raise ValueError(f"dropout_mode must be 'channel' or 'element', got {dropout_mode!r}")
        self.ndim = ndim
        self.depth = depth
        self.multiple = 2**depth
        self.standardize = bool(standardize)
        widths = [base_channels * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList(
            [_conv_block(ndim, in_channels if k == 0 else widths[k - 1], widths[k]) for k in range(depth)]
        )
        self.pool = _POOL[ndim](kernel_size=2)
        self.bottom = _conv_block(ndim, widths[depth - 1], widths[depth])
        p = float(dropout)
        self.bottom_drop = _dropout(ndim, p, dropout_mode)
        self.up = nn.ModuleList(
            [
                _Up(
                    ndim,
                    widths[k + 1],
                    widths[k],
                    p if k > 0 or full_resolution_dropout else 0.0,
                    dropout_mode,
                )
                for k in reversed(range(depth))
            ]
        )
        self.head = _CONV[ndim](widths[0], n_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.ndim + 2:
            raise ValueError(f"expected input (B, C, *S) with {self.ndim} spatial axes, got {list(x.shape)}")
        if self.standardize:
            axes = list(range(2, x.dim()))
            mean = x.mean(dim=axes, keepdim=True)
            std = x.std(dim=axes, keepdim=True)
            x = (x - mean) / (std + 1e-6)
        size = x.shape[2:]
        pad: list[int] = []
        for k in range(len(size) - 1, -1, -1):  # F.pad wants the last axis first
            pad.append(0)
            pad.append((self.multiple - size[k] % self.multiple) % self.multiple)
        x = F.pad(x, pad, mode="replicate")
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom_drop(self.bottom(x))
        k = len(skips) - 1
        for stage in self.up:
            x = stage(x, skips[k])
            k -= 1
        x = self.head(x)
        if self.ndim == 2:
            return x[:, :, : size[0], : size[1]]
        return x[:, :, : size[0], : size[1], : size[2]]
