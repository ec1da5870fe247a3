"""A multi-layer perceptron on the 8x8 digits shipped with nnflow (no download).

Train it with the ``nnflow fit`` command (a checkpoint every epoch, resumable)::

    nnflow fit examples/mlp.py --checkpoint runs/mlp.h5
    nnflow fit examples/mlp.py --checkpoint runs/mlp.h5 --epochs 30 --resume
    nnflow info runs/mlp.h5

or run this file: ``python examples/mlp.py --epochs 10`` does the same. In its default 20
epochs it reaches 97.7 to 98.0% test accuracy (seeds 0 to 7), in about a second on a CPU.
``--device gpu`` trains on a CUDA GPU through CuPy.

The data: the UCI "Optical Recognition of Handwritten Digits" set (Alpaydin and Kaynak, 1998;
CC BY 4.0), see ``nnflow.data.digits``: 1442 training and 355 test images.
"""

from nnflow import losses
from nnflow.cli import run_script
from nnflow.data import DataLoader, digits
from nnflow.layers import Chain, Dropout, Flatten, Linear
from nnflow.optim import AdamW, ExponentialLR
from nnflow.train import accuracy

defaults = {"epochs": 20, "batch_size": 64, "lr": 1e-2}
metrics = {"accuracy": accuracy}


def model(seed):
    """64 pixels -> 128 hidden units (ReLU, dropout) -> 10 logits."""
    return Chain(
        Flatten(),
        Linear(64, 128, activation="relu", rng=seed),
        Dropout(0.2, rng=seed + 1),
        Linear(128, 10, rng=seed + 2),
    )


def data(batch_size, seed):
    """Training batches reshuffled every epoch from ``seed``; the fixed test split for val."""
    train = DataLoader(digits("train"), batch_size, shuffle=True, seed=seed)
    val = DataLoader(digits("test"), 512, shuffle=False)
    return train, val


def loss(model, batch):
    """Softmax cross-entropy of the logits against the labels."""
    images, labels = batch
    return losses.cross_entropy(model(images), labels)


def optimizer(model, lr):
    """AdamW, with no weight decay on the biases."""
    return AdamW(model, lr=lr, weight_decay=1e-2, options={"*.bias": {"weight_decay": 0.0}})


def callbacks(optimizer):
    """The learning rate decays by 0.9 per epoch (whatever the number of epochs)."""
    return [ExponentialLR(optimizer, gamma=0.9)]


if __name__ == "__main__":
    run_script(globals())
