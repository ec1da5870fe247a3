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

    print("\nThe forward tape that ad.grad recorded:")
    print(g.tape)

    # The backward pass is recorded too when grad itself is traced: one straight-line tape
    # of forward and backward operations, replayable on new inputs.
    _, full = ad.trace(lambda W, b, x: ad.grad(f, W, b, x)[1][0], W, b, x)
    print(f"\nForward + backward tape for df/dW ({len(full)} operations):")
    print(full)
    replayed = full.play(W * 2, b, x)
    print(
        "replayed on 2W, equals a fresh ad.grad:",
        np.allclose(replayed, ad.grad(f, W * 2, b, x)[1][0]),
    )

    ad.gradcheck(f, W, b, x)  # raises, naming the argument and worst entry, on a mismatch
    print("\ngradcheck passed")


if __name__ == "__main__":
    main()
