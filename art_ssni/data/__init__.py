"""Offline data sets."""

from art_ssni.data.cifar10 import CIFAR10_CLASSES, default_data_dir, fixed_subset, load_cifar10
from art_ssni.data.digits import NUM_CLASSES, TEST_SIZE, load_digits
from art_ssni.data.imagenet import imagenet_val_files, load_imagenet_val

__all__ = [
    "CIFAR10_CLASSES",
    "default_data_dir",
    "fixed_subset",
    "imagenet_val_files",
    "load_cifar10",
    "load_imagenet_val",
    "NUM_CLASSES",
    "TEST_SIZE",
    "load_digits",
]
