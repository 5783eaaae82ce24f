"""A Vision Transformer trained from scratch on CIFAR-10 with JAX, Flax NNX and Optax."""
