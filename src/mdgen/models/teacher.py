"""A spectrogram teacher: the domain encoder VA-VAE's VF loss and the DiT's REPA loss align to.

DINOv2 and MAE are ImageNet encoders whose weights often cannot be downloaded where radar data
lives, and a poor teacher for time-Doppler images (LightningDiT issue 62, REPA issue 15: retrain
the alignment with a domain model). The teacher here is a small CNN trained on the user labels of
the train split only (stage `train_teacher`). It keeps the `FoundationModel` contract of
`mdgen.losses.foundation`: frozen, `feature_dim`, and `forward(images, grid)` -> a feature map on
the grid of the model being aligned.

    teacher = load_teacher("results/teacher/teacher.pt", images_seen=manifest_rows)
    features = teacher(images, grid=(16, 16))   # (B, feature_dim, 16, 16)

A teacher file records the images it saw (`saw`: count, per-user draw, and a sha256 over their
content). Whoever is taught checks that fingerprint against the images it trains on, so a
teacher from another run, another data set or another low-data draw is refused by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn, Tensor

from mdgen.io import atomic_output
from mdgen.models.checkpoints import load_strictly, read_checkpoint

TEACHER_LAYOUT = "{'state_dict', 'config', 'saw'} as written by train_teacher"


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


class TeacherNet(nn.Module):
    """Four conv-BN-ReLU blocks, the first three followed by 2× max pooling: a feature map at 1/8
    of the input side (8 × 8 for 64 px), whose global average feeds a linear user classifier.

    Trained like the evaluation classifier (`forward` = logits, `features` = pooled features), so
    `mdgen.evaluation.classifier.train_classifier` fits it; its `feature_map` is what teaches.
    The last block keeps the resolution, so every position of the map sees about 40 px of a 64 px
    input (a stride of the gait) and is trained to carry the evidence the pooled classifier needs.
    """

    def __init__(self, num_classes: int, in_chans: int, width: int = 32):
        super().__init__()
        widths = (width, 2 * width, 4 * width, 8 * width)
        blocks, previous = [], in_chans
        for index, w in enumerate(widths):
            blocks.append(nn.Conv2d(previous, w, kernel_size=3, padding=1, bias=False))
            if index < len(widths) - 1:
                blocks.append(nn.MaxPool2d(2))
            blocks += [nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            previous = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(previous, num_classes)
        self.num_features = previous

    def feature_map(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, D, H / 8, W / 8)."""
        return self.blocks(x)

    def block_outputs(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) images -> the four blocks' activations (after their ReLU), at 1/2, 1/4, 1/8
        and 1/8 of the input side: what a perceptual loss compares, as LPIPS compares VGG's."""
        outputs = []
        for module in self.blocks:
            x = module(x)
            if isinstance(module, nn.ReLU):
                outputs.append(x)
        return outputs

    def features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, D) globally pooled features."""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, K) logits."""
        return self.head(self.features(x))


class SpectrogramTeacher(nn.Module):
    """A frozen TeacherNet behind the FoundationModel interface.

    num_classes, in_chans, width: TeacherNet's arguments. size: the image side the teacher was
    trained at; inputs are resized to it, so that it always sees images as in training.
    """

    def __init__(self, num_classes: int, in_chans: int, width: int = 32, size: int = 64):
        super().__init__()
        self.kind = "domain"
        self.size = size
        self.net = TeacherNet(num_classes, in_chans, width)

    @property
    def feature_dim(self) -> int:
        """Channels of the feature map (8 × width)."""
        return self.net.num_features

    def train(self, mode: bool = True) -> SpectrogramTeacher:
        # Frozen: BatchNorm keeps its running statistics inside a training LightningModule.
        return super().train(False)

    def extra_repr(self) -> str:
        return f"size={self.size}, feature_dim={self.feature_dim}"

    def block_outputs(self, x: Tensor) -> list[Tensor]:
        """TeacherNet.block_outputs, with gradients to x (for FeaturePerceptualLoss)."""
        return self.net.block_outputs(x)

    def resized(self, x: Tensor) -> Tensor:
        """x at the training size (bilinear, antialiased), as the teacher always sees images."""
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)

    @torch.no_grad()
    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x: (B, C, H, W) in [-1, 1] -> features (B, feature_dim, grid_h, grid_w).

        The image is resized (bilinear, antialiased) to the training size; the 1/8 map is then
        average-pooled onto a coarser grid, or bilinearly interpolated onto a finer one (the VF
        loss of an f4 VAE at 64 px asks for 16 × 16 from the teacher's 8 × 8).
        """
        features = self.net.feature_map(self.resized(x))  # (B, D, size / 8, size / 8)
        grid = tuple(grid)
        if grid == tuple(features.shape[-2:]):
            return features
        if all(g <= f for g, f in zip(grid, features.shape[-2:])):
            return F.adaptive_avg_pool2d(features, grid)
        return F.interpolate(features, size=grid, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# What a teacher saw
# ---------------------------------------------------------------------------------------------


def images_fingerprint(rows: Iterable[Mapping]) -> str:
    """sha256 over the content hashes (the manifest's `sha256` column) of a set of images, in any
    order: equal exactly when two stages saw the same images."""
    digest = hashlib.sha256()
    for sha in sorted(row["sha256"] for row in rows):
        digest.update(sha.encode())
    return digest.hexdigest()


class TeacherMismatchError(ValueError):
    """A teacher trained on other images than the model it would teach."""


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------


def save_teacher(path, teacher: SpectrogramTeacher, config: dict, saw: dict, metrics: dict) -> None:
    """Write {'state_dict', 'config', 'saw', 'metrics'} atomically; config['model'] holds the
    SpectrogramTeacher kwargs, `saw` the images it trained on (see images_fingerprint)."""
    checkpoint = {
        "state_dict": {key: value.detach().cpu() for key, value in teacher.state_dict().items()},
        "config": config,
        "saw": saw,
        "metrics": metrics,
    }
    with atomic_output(path) as tmp:
        torch.save(checkpoint, tmp)


def load_teacher(path, images_seen: Iterable[Mapping] | None = None) -> tuple[SpectrogramTeacher, dict]:
    """The frozen teacher of a train_teacher file, loaded strictly, and what it saw.

    images_seen: the manifest rows of the images the caller trains on. The teacher must have seen
    exactly these (no more: it would leak images the taught model never saw into it; no fewer: it
    is another run's teacher); otherwise TeacherMismatchError names both sets.
    """
    source, checkpoint = read_checkpoint(path, TEACHER_LAYOUT)
    missing = [key for key in ("state_dict", "config", "saw") if key not in checkpoint]
    if missing:
        raise ValueError(f"{source} lacks {missing}: expected {TEACHER_LAYOUT}")
    saw = dict(checkpoint["saw"])
    if images_seen is not None:
        rows = list(images_seen)
        expected = images_fingerprint(rows)
        if saw["fingerprint"] != expected:
            raise TeacherMismatchError(
                f"{source} was trained on {saw['count']} images (per user: {saw['per_user'] or 'all'}; "
                f"sha256 {saw['fingerprint'][:12]}…), but the model it would teach trains on {len(rows)} images "
                f"(sha256 {expected[:12]}…): a teacher from another run, data set or low-data draw. Rebuild it "
                "for this run (snakemake results/teacher/teacher.pt, or the low-data k's teacher)."
            )
    teacher = SpectrogramTeacher(**checkpoint["config"]["model"])
    load_strictly(teacher, checkpoint["state_dict"], source)
    return teacher.eval(), saw
