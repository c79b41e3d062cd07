"""The MNIST studies: the founding reproduction, the sweep and the compression of its MLPs."""
