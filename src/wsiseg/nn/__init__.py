"""The learning parts (PyTorch): the LightningModule, patch data and its DataModule, augmentations, losses.

Importing this package loads nothing; its modules import torch, so the CLI imports them only when a
subcommand needs them.
"""
