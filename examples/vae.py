"""A variational autoencoder (Kingma and Welling, 2014) on the 8x8 digits shipped with nnflow.

The encoder maps an image ``x`` to the mean and log-variance of a Gaussian ``q(z | x)`` over a
16-dimensional latent ``z``; a sample ``z = mu + exp(logvar / 2) * eps`` (the
reparameterisation: ``eps ~ N(0, I)`` is drawn through ``nnflow.random``, so the compiled step
draws fresh noise every call) is decoded into the logits of Bernoulli pixel probabilities
``p(x | z)``. The loss is the negative evidence lower bound (ELBO), in nats per image::

    -ELBO(x) = reconstruction + KL = -log p(x | z) + KL(q(z | x) || N(0, I))

the binary cross-entropy summed over the 64 pixels plus ``nnflow.losses.gaussian_kl``. The
``elbo`` and ``val_elbo`` columns are the ELBO on the training and held-out images (higher is
better), estimated in eval mode with one fixed noise sample per image, so epochs compare
without sampling noise.

After every epoch it writes two PNG grids: ``vae-reconstructions.png`` (rows of held-out
digits, each followed by a row of their reconstructions) and ``vae-samples.png`` (digits
decoded from ``z ~ N(0, I)``, the same ``z`` every epoch), next to the checkpoint or, without
one, in the current folder. They need Pillow (``pip install 'nnflow[examples]'``); without it
the example trains and says it skipped them.

Train it with ``nnflow fit`` (a checkpoint every epoch, resumable)::

    nnflow fit examples/vae.py --checkpoint runs/vae.h5

or run this file: ``python examples/vae.py --epochs 5``. ``--device gpu`` trains on a CUDA GPU
through CuPy. In its default 50 epochs (about 4 seconds on 2 CPU cores) the held-out ELBO goes
from -28.5 nats per image after the first epoch to -24.5; the best possible value is -13.8, the
entropy of the held-out pixels' grey levels.

The data: the UCI "Optical Recognition of Handwritten Digits" set (Alpaydin and Kaynak, 1998;
CC BY 4.0), see ``nnflow.data.digits``; pixel intensities in ``[0, 1]`` are the Bernoulli
targets, as is usual for grey-level MNIST.
"""

import os

import numpy as np

from nnflow import Model, losses
from nnflow import random as nnrandom
from nnflow.backend import to_device
from nnflow.cli import run_script
from nnflow.data import DataLoader, digits
from nnflow.functional import sigmoid
from nnflow.init import as_generator
from nnflow.layers import Chain, Flatten, Linear
from nnflow.optim import Adam
from nnflow.train import Callback

defaults = {"epochs": 50, "batch_size": 64, "lr": 2e-3}
LATENT = 16
EVAL_SEED = 1234  # the fixed noise of eval-mode ELBO estimates


class VAE(Model):
    """Encoder ``64 -> 256 -> (mu, logvar)``, decoder ``z -> 256 -> 64`` pixel logits."""

    def __init__(self, latent: int = LATENT, hidden: int = 256, seed: int = 0):
        self.encoder = Chain(
            Flatten(),
            Linear(64, hidden, activation="relu", rng=seed),
            Linear(hidden, 2 * latent, rng=seed + 1),
        )
        self.decoder = Chain(
            Linear(latent, hidden, activation="relu", rng=seed + 2),
            Linear(hidden, 64, rng=seed + 3),
        )
        self.latent = latent
        self.rng = as_generator(seed + 4)  # the reparameterisation noise (saved in checkpoints)

    def encode(self, x):
        """The mean and log-variance ``(N, latent)`` of ``q(z | x)``."""
        h = self.encoder(x)
        return h[:, : self.latent], h[:, self.latent :]

    def decode(self, z):
        """Pixel logits ``(N, 1, 8, 8)`` of ``p(x | z)``."""
        return np.reshape(self.decoder(z), (-1, 1, 8, 8))

    def forward(self, x):
        """``(logits, mu, logvar)``: the decoded sample of ``q(z | x)`` and its parameters.

        In training the noise comes from the model's generator, fresh every call; in eval mode
        from a generator seeded with ``EVAL_SEED`` on every call, so an evaluation is
        deterministic and two epochs' ELBOs differ only by what the model learnt.
        """
        mu, logvar = self.encode(x)
        rng = self.rng if self.training else np.random.default_rng(EVAL_SEED)
        eps = nnrandom.normal(rng, mu.shape, dtype=mu.dtype, like=mu)
        z = mu + np.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def model(seed):
    """A VAE with a 16-dimensional latent and 256 hidden units each way."""
    return VAE(seed=seed)


def data(batch_size, seed):
    """The training digits reshuffled every epoch from ``seed``; the test digits for val."""
    train = DataLoader(digits("train"), batch_size, shuffle=True, seed=seed)
    val = DataLoader(digits("test"), 512, shuffle=False)
    return train, val


def negative_elbo(model, images):
    """``-ELBO`` per image, in nats: reconstruction (summed over pixels) plus KL."""
    logits, mu, logvar = model(images)
    recon = losses.binary_cross_entropy_with_logits(logits, images, reduction="sum")
    return recon / images.shape[0] + losses.gaussian_kl(mu, logvar)


def loss(model, batch):
    """The negative ELBO of the images (the labels are not used)."""
    images, _ = batch
    return negative_elbo(model, images)


def elbo(model, batch):
    """The ELBO in nats per image (the trainer runs metrics in eval mode: fixed noise)."""
    return -float(negative_elbo(model, batch[0]))


metrics = {"elbo": elbo}


def optimizer(model, lr):
    """Adam."""
    return Adam(model, lr=lr)


def grid(images, columns: int, scale: int = 6, gap: int = 2) -> np.ndarray:
    """``uint8`` picture of ``(N, 1, 8, 8)`` images in ``[0, 1]`` tiled ``columns`` across,
    each pixel a ``scale x scale`` block, ``gap`` white pixels between tiles."""
    images = np.asarray(to_device(images, "cpu"), dtype=np.float64)[:, 0]
    n, h, w = images.shape
    rows = -(-n // columns)
    tile_h, tile_w = h * scale + gap, w * scale + gap
    out = np.full((rows * tile_h + gap, columns * tile_w + gap), 255, np.uint8)
    pixels = np.kron(1.0 - np.clip(images, 0.0, 1.0), np.ones((scale, scale)))  # dark ink
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = gap + r * tile_h, gap + c * tile_w
        out[top : top + h * scale, left : left + w * scale] = np.round(pixels[i] * 255)
    return out


class WriteGrids(Callback):
    """After every epoch, write PNG grids of reconstructions and of samples from the prior."""

    def __init__(self, n: int = 64, columns: int = 16):
        self.n, self.columns = n, columns
        self.held_out = digits("test")[0][:: 355 // (n // 2)][: n // 2]  # a mix of digits
        self.z = np.random.default_rng(0).standard_normal((n, LATENT)).astype(np.float32)
        self.paths: tuple[str, str] | None = None
        self.warned = False

    def _paths(self, trainer) -> tuple[str, str]:
        if trainer.checkpoint:
            stem = os.path.splitext(trainer.checkpoint)[0]
            return f"{stem}-reconstructions.png", f"{stem}-samples.png"
        return "vae-reconstructions.png", "vae-samples.png"

    def on_epoch_end(self, trainer, logs):
        try:
            from PIL import Image
        except ImportError:
            if not self.warned:
                print("vae.py: Pillow is not installed, so no PNG grids are written "
                      "(pip install 'nnflow[examples]')")  # fmt: skip
                self.warned = True
            return
        vae, columns = trainer.model, self.columns
        was_training = vae.training
        vae.eval()
        try:
            x = to_device(self.held_out, trainer.device)
            recon = sigmoid(vae(x)[0])
            z = to_device(self.z, trainer.device)
            samples = sigmoid(vae.decode(z))
        finally:
            vae.train(was_training)
        x, recon = to_device(x, "cpu"), to_device(recon, "cpu")
        pairs = [a for r in range(0, len(x), columns) for a in (x[r : r + columns],
                 recon[r : r + columns])]  # fmt: skip
        paths = self._paths(trainer)
        os.makedirs(os.path.dirname(paths[0]) or ".", exist_ok=True)
        Image.fromarray(grid(np.concatenate(pairs), columns)).save(paths[0])
        Image.fromarray(grid(samples, columns)).save(paths[1])
        self.paths = paths

    def on_fit_end(self, trainer):
        if self.paths:
            print(f"reconstructions: {self.paths[0]}  samples: {self.paths[1]}", flush=True)


def callbacks(optimizer):
    """The PNG grids."""
    return [WriteGrids()]


if __name__ == "__main__":
    run_script(globals())
