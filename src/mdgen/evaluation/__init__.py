"""Evaluation: the person-identification classifier (the yardstick), distribution metrics, the
augmentation study and where identity is lost between real images, reconstructions and samples."""
