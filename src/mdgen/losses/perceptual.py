"""LPIPS (VGG16) perceptual distance from the `lpips` package, with local weights only.

The official VA-VAE loss uses taming-transformers' LPIPS: the same VGG16 slices, scaling layer and
linear calibration layers as `lpips.LPIPS(net="vgg")`, and taming's calibration file `vgg.pth`
(md5 d507d7349b931f0638a25a48a722f98a, `taming/util.py` MD5_MAP) is byte-identical to the
`lpips/weights/v0.1/vgg.pth` that the `lpips` package ships, so no download is needed for it.
The VGG16 backbone is ImageNet-trained torchvision weights, which torchvision would download:
here they come from a file the caller names.
"""

from __future__ import annotations

import os
import warnings

import lpips
import torch
import torch.nn as nn
import torch.nn.functional as F

VGG16_FILENAME = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1

# lpips.pretrained_networks.vgg16 splits torchvision's vgg16().features[0:30] into five
# nn.Sequential slices at the ReLUs whose outputs LPIPS compares (relu1_2 ... relu5_3), keeping
# the torchvision index as the module name: features.N lives at net.slice{k}.N.
VGG16_SLICE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def build_lpips(vgg_weights: str | None, *, random_backbone: bool = False) -> lpips.LPIPS:
    """LPIPS-VGG with the package's calibration weights and the VGG16 backbone read from `vgg_weights`.

    vgg_weights: a torchvision `vgg16` state dict file (keys `features.0.weight`, ...), such as
        torch hub's cached `vgg16-397923af.pth`. None looks in the torch hub cache.
    random_backbone: when no weight file is found, keep the randomly initialised backbone instead
        of raising (for tests; the distance is then not perceptual). The caller should warn.

    Returns the frozen (eval, requires_grad False) module. Raises FileNotFoundError when no weight
    file is found and random_backbone is False, and ValueError when the file is not a VGG16.
    """
    # pnet_rand=True stops lpips from asking torchvision for pretrained weights (a download);
    # pretrained=True loads the calibration layers from the file inside the lpips package.
    # lpips calls torchvision's deprecated `pretrained=` argument; its warnings say nothing to our users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)

    weights_path = vgg_weights or _hub_cache_vgg16()
    if weights_path is None:
        if not random_backbone:
            raise FileNotFoundError(
                f"LPIPS needs ImageNet VGG16 weights and none were given, nor found in the torch hub cache "
                f"({os.path.join(torch.hub.get_dir(), 'checkpoints', VGG16_FILENAME)}). "
                f"Get torchvision's vgg16 IMAGENET1K_V1 weights, file {VGG16_FILENAME} "
                f"(https://download.pytorch.org/models/{VGG16_FILENAME}), and set vae.perceptual.vgg16_weights "
                "in the config to its path or put it in the hub cache path above; or switch the perceptual "
                "loss off with vae.lossconfig.perceptual_weight: 0; or, for tests only, set "
                "vae.perceptual.random_backbone: true."
            )
    else:
        load_vgg16_backbone(model, weights_path)
    return model.eval().requires_grad_(False)


def _hub_cache_vgg16() -> str | None:
    path = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILENAME)
    return path if os.path.isfile(path) else None


def load_vgg16_backbone(model: lpips.LPIPS, weights_path: str) -> list[str]:
    """Copy torchvision VGG16 `features.*` weights into an LPIPS-VGG's `net.slice*` modules.

    Every convolution of the LPIPS backbone must be filled and every `features.*` entry of the file
    must have a place; the classifier entries of the file are not used by LPIPS and are skipped.
    Returns the LPIPS keys that were loaded.
    """
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"VGG16 weight file {weights_path} does not exist: set vae.perceptual.vgg16_weights to the path "
            f"of torchvision's vgg16 IMAGENET1K_V1 weights ({VGG16_FILENAME})"
        )
    state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(state_dict, dict) and "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]

    slice_of_index = {i: k + 1 for k, (start, stop) in enumerate(VGG16_SLICE_BOUNDS) for i in range(start, stop)}
    mapped, file_key, unplaced = {}, {}, []
    for key, value in state_dict.items():
        if not key.startswith("features."):
            continue
        index = int(key.split(".")[1])
        if index not in slice_of_index:
            unplaced.append(key)
            continue
        lpips_key = f"slice{slice_of_index[index]}.{key[len('features.') :]}"
        mapped[lpips_key], file_key[lpips_key] = value, key

    backbone = model.net
    expected = backbone.state_dict()
    missing = ["features." + key.split(".", 1)[1] for key in expected if key not in mapped]
    wrong_shape = [
        f"{file_key[key]}: file {tuple(mapped[key].shape)}, LPIPS {tuple(expected[key].shape)}"
        for key in expected
        if key in mapped and mapped[key].shape != expected[key].shape
    ]
    if missing or unplaced or wrong_shape:
        raise ValueError(
            f"{weights_path} is not a torchvision vgg16 state dict (expected keys features.0.weight ... "
            f"features.28.bias as in {VGG16_FILENAME}). Missing from the file: {missing}; "
            f"file entries with no LPIPS layer: {unplaced}; shape mismatches: {wrong_shape}"
        )
    backbone.load_state_dict(mapped, strict=True)
    return [f"net.{key}" for key in mapped]


class PerceptualLoss(nn.Module):
    """Per-sample LPIPS distance between images in [-1, 1], shape (B, 1, 1, 1) like taming's LPIPS.

    The official loss adds it to the per-pixel L1 map (B, C, H, W), so it broadcasts over pixels.
    1-channel (grey) images are replicated to the 3 channels VGG16 expects. The module stays in eval
    mode: in the official Lightning training, `.train()` also reached taming's LPIPS and switched on
    the Dropout before its linear layers; that only adds noise (the expectation is unchanged).
    """

    def __init__(self, lpips_model: lpips.LPIPS):
        super().__init__()
        self.lpips = lpips_model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, 1 or 3, H, W) in [-1, 1] -> (B, 1, 1, 1). Gradients flow to x and y."""
        if x.shape[1] != y.shape[1] or x.shape[1] not in (1, 3):
            raise ValueError(
                f"LPIPS compares 1- or 3-channel images of the same channel count, got {x.shape[1]} and "
                f"{y.shape[1]} channels"
            )
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.lpips(x, y)


class FeaturePerceptualLoss(nn.Module):
    """LPIPS's distance (Zhang et al. 2018) on another frozen network's activations, with no learned
    calibration: per-sample (B, 1, 1, 1), a drop-in for PerceptualLoss.

    network: a frozen module with `block_outputs(x) -> [feature maps]` and `resized(x)` (the
    spectrogram teacher, `mdgen.models.teacher.SpectrogramTeacher`). At each block, the feature
    vectors are scaled to unit length over channels, their squared difference summed over channels
    and averaged over positions (LPIPS with `lin=False`); the blocks' distances are averaged. Each
    lies in [0, 4]: 0 for equal activations, 2 for orthogonal ones. (F.normalize, unlike lpips'
    x / (|x| + eps), keeps the gradient finite where a ReLU zeroed every channel.)

    Where no VGG16 weights can be had, or ImageNet features are a poor measure of what matters in a
    spectrogram, this compares images through a network trained on them: the teacher learned which
    strokes and textures tell users apart, so the decoder is pushed to keep those.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FeaturePerceptualLoss:
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, C, H, W) in [-1, 1] -> (B, 1, 1, 1). Gradients flow to x and y."""
        if x.shape != y.shape:
            raise ValueError(
                f"the perceptual loss compares images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        net = self.network
        features_x = net.block_outputs(net.resized(x))
        features_y = net.block_outputs(net.resized(y))
        distances = [
            (F.normalize(fx, dim=1) - F.normalize(fy, dim=1))
            .pow(2)
            .sum(dim=1, keepdim=True)
            .mean(dim=(2, 3), keepdim=True)
            for fx, fy in zip(features_x, features_y)
        ]
        return torch.stack(distances).mean(dim=0)
