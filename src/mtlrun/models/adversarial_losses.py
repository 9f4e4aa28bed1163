"""Adversarial losses as pure functions of the discriminator's logits, and the R1 penalty.

Every loss is a mean over the batch and is computed in float32, so that bf16 logits from an
autocast region do not lose the small differences the players learn from.

- `hinge`: Lim & Ye, "Geometric GAN", 2017; Miyato et al., "Spectral Normalization for
  Generative Adversarial Networks", ICLR 2018.
  D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))];  G: -E[D(G(z))].
- `nonsaturating`: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, with the
  generator's non-saturating objective; softplus is the stable form of -log(sigmoid).
  D: E[softplus(-D(x))] + E[softplus(D(G(z)))];  G: E[softplus(-D(G(z)))].
- `least_squares`: Mao et al., "Least Squares Generative Adversarial Networks", ICCV 2017,
  with targets b = 1 (real), a = 0 (fake) for D and c = 1 for G, and the paper's 1/2 factors.
  D: 1/2 E[(D(x) - 1)^2] + 1/2 E[D(G(z))^2];  G: 1/2 E[(D(G(z)) - 1)^2].
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlrun.errors import UserError

__all__ = ["LOSSES", "discriminator_loss", "generator_loss", "r1_penalty"]


def _d_hinge(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def _g_hinge(fake: Tensor) -> Tensor:
    return -fake.mean()


def _d_nonsaturating(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def _g_nonsaturating(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


def _d_least_squares(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (real - 1).square().mean() + 0.5 * fake.square().mean()


def _g_least_squares(fake: Tensor) -> Tensor:
    return 0.5 * (fake - 1).square().mean()


_DISCRIMINATOR: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "hinge": _d_hinge,
    "nonsaturating": _d_nonsaturating,
    "least_squares": _d_least_squares,
}
_GENERATOR: dict[str, Callable[[Tensor], Tensor]] = {
    "hinge": _g_hinge,
    "nonsaturating": _g_nonsaturating,
    "least_squares": _g_least_squares,
}
LOSSES = tuple(_DISCRIMINATOR)


def _check(kind: str) -> None:
    if kind not in _DISCRIMINATOR:
        raise UserError(f"unknown adversarial loss {kind!r}; choose one of {', '.join(LOSSES)}")


def discriminator_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's loss (a float32 scalar) for logits on real and generated images.

    Args:
        kind: one of `LOSSES`.
        real_logits: D's logits on real images, any shape.
        fake_logits: D's logits on generated images (detach them from G for D's step).

    Raises:
        UserError: `kind` is not one of `LOSSES`.
    """
    _check(kind)
    return _DISCRIMINATOR[kind](real_logits.float(), fake_logits.float())


def generator_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """The generator's loss (a float32 scalar) for D's logits on generated images.

    Raises:
        UserError: `kind` is not one of `LOSSES`.
    """
    _check(kind)
    return _GENERATOR[kind](fake_logits.float())


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1: E_x[||grad_x D(x)||^2] over real images (Mescheder et al., "Which Training Methods
    for GANs do actually Converge?", ICML 2018).

    `real_images` must have `requires_grad=True` before D sees them. The gradient is taken with
    `create_graph=True`, so the penalty can be backpropagated into D. The caller scales it:
    the usual term is gamma / 2 * r1. With lazy regularisation (Karras et al., "Analyzing and
    Improving the Image Quality of StyleGAN", CVPR 2020) it is added only every k-th D step
    and multiplied by k as well, so that its average strength is unchanged.

    Returns:
        A float32 scalar: the squared gradient norm per image, averaged over the batch.
    """
    (gradient,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return gradient.float().square().flatten(1).sum(1).mean()
