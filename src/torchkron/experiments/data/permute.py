"""A fixed random permutation of an image's pixels (the "permuted MNIST" control).

Permuting the pixels of every image the same way keeps all the information a fully
connected net can use and destroys what an image-shaped layer relies on: neighbouring
pixels are no longer neighbours, rows are no longer rows. A net whose accuracy drops
under the permutation was using the image's layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["permute_pixels", "pixel_permutation", "unpermute_pixels"]


def pixel_permutation(seed: int, pixels: int) -> Tensor:
    """The permutation ``--permute-pixels seed`` applies to images of ``pixels`` pixels.

    ``torch.randperm(pixels)`` drawn from a fresh CPU ``torch.Generator`` seeded with
    ``seed``, so it is the same on every machine and independent of the global RNG (the
    runs' init and shuffling are unchanged by it).

    Returns:
        int64 tensor ``perm`` of shape ``(pixels,)``: a permuted image's pixel ``k`` is
        the original image's pixel ``perm[k]`` (flat, row-major).

    Examples:
        >>> perm = pixel_permutation(0, 6)
        >>> sorted(perm.tolist())
        [0, 1, 2, 3, 4, 5]
        >>> torch.equal(perm, pixel_permutation(0, 6))
        True
    """
    if seed < 0:
        raise ValueError(f"the pixel permutation's seed must be 0 or more, got {seed}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(pixels, generator=generator)


def permute_pixels(images: Tensor, perm: Tensor) -> Tensor:
    """``images`` ``(N, pixels)`` (flat) with their pixels reordered by ``perm``."""
    if images.shape[-1] != perm.shape[0]:
        raise ValueError(
            f"images have {images.shape[-1]} pixels but the permutation has {perm.shape[0]}"
        )
    return images.index_select(-1, perm)  # (N, pixels)


def unpermute_pixels(images: Tensor, perm: Tensor) -> Tensor:
    """The inverse of :func:`permute_pixels`: back to the original pixel order.

    Used to show what a net trained on permuted images looks at, in image space.
    """
    return images.index_select(-1, torch.argsort(perm))  # (N, pixels)
