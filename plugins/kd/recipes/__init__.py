"""Recipes shipped with the distillation plugins (MNIST-1D and CIFAR-100)."""
