"""A person-identification classifier for spectrograms: the yardstick of the evaluation stage.

The evaluation stage trains it many times (protocols × seeds) on real and/or synthetic images,
always tests it on the real validation split, and reads the real-trained model's penultimate
features for distribution metrics. So it has to be cheap (seconds on two CPU cores for a few
thousand 64×64 images), deterministic for a seed, and fixed: one `Recipe`, the same for every
protocol, so that differences in accuracy come from the training data alone.

    images = load_images(paths, channels=3, size=recipe.size)       # (N, C, 64, 64) in [-1, 1]
    model = train_classifier(images, labels, num_classes=31, recipe=Recipe(), seed=0)
    predicted, logits = predict(model, val_images)
    features = embed(model, val_images)                            # (N, D)

Speed: the default recipe trains on 744 images (31 users × 24) at 64×64 in about 5 s on two
idle CPU cores. torch's threads are left as the caller set them, but on a busy machine two
threads on two cores can be over ten times slower than one (each small op waits for a thread
that was descheduled): give the process the cores its threads use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mdgen.data.dataset import to_tensor
from mdgen.data.images import load_spectrogram

ARCHITECTURES = ("cnn", "resnet18")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def load_images(paths: list[str], channels: int, size: int, colormap: str | None = None) -> torch.Tensor:
    """Spectrogram files as one (N, C, size, size) float tensor in [-1, 1], resized with LANCZOS;
    with a `colormap`, their 1-channel magnitudes (what the models see, not what the judges see).

    No augmentation: the axes are time and Doppler, so a flip reverses time or negates velocity.
    """
    if not paths:
        raise ValueError("load_images got no paths: expected at least one spectrogram file")
    return as_judged((load_spectrogram(path, channels, colormap) for path in paths), size)


def as_judged(images: Iterable[Image.Image], size: int) -> torch.Tensor:
    """Images as the classifier sees them: resized to size × size with LANCZOS, stacked in [-1, 1]."""
    tensors = []
    for image in images:
        if image.size != (size, size):
            image = image.resize((size, size), Image.LANCZOS)
        tensors.append(to_tensor(image))
    return torch.stack(tensors)


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """The fixed training recipe: AdamW with a cosine learning-rate schedule over `epochs`.

    `width` is the channel count of the CNN's first block (the blocks have width × (1, 2, 4, 8));
    resnet18 ignores it. `size` is the side the images are resized to by `load_images`.

    Defaults measured on the default simulated set (31 users, 24 train / 8 val each, 128 px
    resized to 64), mean val accuracy of seeds 0-2, time per training on this 2-core CPU:
    width 16, 15 epochs, lr 2e-3: 0.945 in 4.7 s (2 threads; 7.2 s on 1 thread). Wider or
    longer buys little: width 16 with 20 epochs at lr 3e-3 reaches 0.950 in a third more time,
    width 8 only 0.909. Label smoothing 0.1 changed nothing (0.942 vs 0.942 at 20 epochs), so it is off.
    """

    architecture: str = "cnn"
    size: int = 64
    epochs: int = 15
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    width: int = 16
    label_smoothing: float = 0.0


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class CompactCNN(nn.Module):
    """Four conv-maxpool-BN-ReLU blocks, global average pooling, dropout and a linear layer."""

    def __init__(self, num_classes: int, in_chans: int, width: int = 16, dropout: float = 0.2):
        super().__init__()
        widths = (width, 2 * width, 4 * width, 8 * width)
        blocks, previous = [], in_chans
        for w in widths:
            blocks += [
                # No conv bias: BatchNorm's shift replaces it.
                nn.Conv2d(previous, w, kernel_size=3, padding=1, bias=False),
                # Pooling before BatchNorm and ReLU (as in Keller Jordan's airbench) normalises a
                # quarter of the pixels. With the default recipe on the default simulated set it
                # is faster and more accurate than conv-BN-ReLU-pool: 7.2 vs 9.5 s per training
                # on one thread, 0.945 vs 0.905 val accuracy (mean of seeds 0-2).
                nn.MaxPool2d(2),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            previous = w
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(previous, num_classes)
        self.num_features = previous

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, D) penultimate features, D = 8 × width."""
        x = self.blocks(x)  # (N, D, H / 16, W / 16)
        return x.mean(dim=(2, 3))  # (N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, K) logits."""
        return self.head(self.dropout(self.features(x)))


class TimmClassifier(nn.Module):
    """A timm model with the `features` / `forward` interface of CompactCNN."""

    def __init__(self, name: str, num_classes: int, in_chans: int):
        super().__init__()
        self.model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
        self.num_features = self.model.num_features

    @property
    def head(self) -> nn.Module:
        """The last layer, which maps `features` to logits."""
        return self.model.get_classifier()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, D) pooled features before the classifier (D = 512 for resnet18)."""
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, K) logits."""
        return self.model(x)


def build_classifier(num_classes: int, channels: int, recipe: Recipe) -> nn.Module:
    """The recipe's architecture with freshly initialised weights (from torch's global RNG)."""
    if recipe.architecture == "cnn":
        return CompactCNN(num_classes, channels, width=recipe.width)
    if recipe.architecture == "resnet18":
        return TimmClassifier("resnet18", num_classes, channels)
    raise ValueError(f"unknown classifier architecture {recipe.architecture!r}: expected one of {ARCHITECTURES}")


# ---------------------------------------------------------------------------------------------
# Training and inference
# ---------------------------------------------------------------------------------------------


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be ({len(images)},) like the images, got shape {tuple(labels.shape)}")
    if len(images) < 2:
        raise ValueError(f"training needs at least 2 images (BatchNorm needs batches of 2 or more), got {len(images)}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels range from {low} to {high}, outside 0..{num_classes - 1} for num_classes={num_classes}: "
            "labels are class_label(user_id), so num_classes must be larger than the highest user number"
        )


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    recipe: Recipe,
    seed: int,
    model_factory: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Train a fresh classifier on in-memory images (N, C, H, W) in [-1, 1]; return it in eval mode.

    Deterministic for a seed on a given machine and thread count (the thread count changes the
    order of floating-point sums): the seed sets the initial weights, the dropout masks and the
    order of the batches, and the caller's global RNG state is left untouched. `model_factory`
    builds another network (forward = logits) to train with the same recipe (the teacher does);
    by default the recipe's architecture.
    """
    _check_inputs(images, labels, num_classes)
    if recipe.epochs < 1:
        raise ValueError(f"recipe.epochs must be at least 1, got {recipe.epochs}")
    labels = labels.long()
    batch_size = min(recipe.batch_size, len(images))
    # Dropping the last incomplete batch keeps every batch the same size (and never 1, which
    # BatchNorm cannot train on); reshuffling each epoch means no image is left out for good.
    steps_per_epoch = len(images) // batch_size
    total_steps = recipe.epochs * steps_per_epoch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory() if model_factory else build_classifier(num_classes, images.shape[1], recipe)
        # channels_last halves the time of a CNN training step on CPU (oneDNN's native layout).
        model = model.to(images.device, memory_format=torch.channels_last)
        shuffle = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))
        )
        model.train()
        for _ in range(recipe.epochs):
            order = torch.randperm(len(images), generator=shuffle).to(images.device)
            for step in range(steps_per_epoch):
                batch = order[step * batch_size : (step + 1) * batch_size]
                logits = model(images[batch].contiguous(memory_format=torch.channels_last))
                loss = F.cross_entropy(logits, labels[batch], label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def _batched(model: nn.Module, images: torch.Tensor, batch_size: int, fn) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat(
        [
            fn(images[i : i + batch_size].to(device).contiguous(memory_format=torch.channels_last))
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels (N,), logits (N, K)) for images (N, C, H, W)."""
    logits = _batched(model, images, batch_size, model)
    return logits.argmax(dim=1), logits


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features (N, D) for images (N, C, H, W)."""
    return _batched(model, images, batch_size, model.features)
