"""Classifiers and the embedded offline model zoo."""

from art_ssni.models.classifiers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NormalizedClassifier,
    load_cifar10_wideresnet,
    load_imagenet_resnet50,
)
from art_ssni.models.defended import DefendedClassifier
from art_ssni.models.small_cnn import SmallCNN
from art_ssni.models.zoo import (
    load_embedded_classifier,
    load_embedded_eps_net,
    load_zoo_manifest,
    zoo_root,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DefendedClassifier",
    "NormalizedClassifier",
    "load_cifar10_wideresnet",
    "load_imagenet_resnet50",
    "SmallCNN",
    "load_embedded_classifier",
    "load_embedded_eps_net",
    "load_zoo_manifest",
    "zoo_root",
]
