"""Data: the built-in digits set, CIFAR-10, ImageFolder/ImageNet, VOC loaders and S splits,
and ``iter_inputs`` which turns any user data into validated input batches."""

from .batches import first_batch, iter_inputs, iter_inputs_and_labels

__all__ = ["first_batch", "iter_inputs", "iter_inputs_and_labels"]
