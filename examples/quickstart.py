"""nnflow quick start: differentiate plain NumPy code, look at the tape, check the gradient.

Run it with ``python examples/quickstart.py``.
"""

import numpy as np

from nnflow import ad


def f(W, b, x):
    """A one-layer network's squared activations, summed: written with plain NumPy calls."""
    return np.sum(np.tanh(W @ x + b[:, None]) ** 2)


def main() -> None:
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 3))  # float64 throughout, so finite differences are accurate
    b = rng.standard_normal(4)
    x = rng.standard_normal((3, 5))

    val, g = ad.grad(f, W, b, x)
    print(f"f(W, b, x) = {float(val):.6f}")
    for i, name in enumerate(("W", "b", "x")):
        print(f"df/d{name}: shape {g[i].shape}, dtype {g[i].dtype}")

    print("\nThe recorded tape (forward and backward):")
    print(g.tape)

    ad.gradcheck(f, W, b, x)  # raises, naming the argument and worst entry, on a mismatch
    print("\ngradcheck passed")


if __name__ == "__main__":
    main()
