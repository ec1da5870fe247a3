"""Per-op overhead: a chain of 50 tiny elementwise ops and a sum, forward and backward.

The chain (sin, multiply by a scalar, exp, add a scalar, tanh, cos, ...) runs on a 4-element
float64 array; per-op figures divide a call's time by its 51 primitive calls. It is the *same
source code* for nnflow, torch, JAX and HIPS autograd: only the module bound to ``np`` changes
(``numpy``, ``torch``, ``jax.numpy`` or ``autograd.numpy``). The hand-written NumPy systems
are generated from the same op list: ``numpy-naive`` writes the forward and backward as plain
expressions, ``numpy-best`` into buffers made once (``out=``).
"""

from __future__ import annotations

import numpy as np

from ._common import SYSTEMS, Bench, Config, f64, nnflow_device, setup_jax, setup_torch

#: One cycle of the chain: (operation, scalar constant). Chosen so that values stay bounded
#: and the gradient of a 50-op chain is neither vanishing nor exploding (about 1e-2).
CYCLE = [
    ("sin", None),
    ("mul", 1.3),
    ("exp", None),
    ("add", -1.2),
    ("tanh", None),
    ("mul", 2.0),
    ("cos", None),
    ("add", 0.3),
    ("mul", -1.1),
    ("tanh", None),
]

#: The input: a 4-element float64 array.
X0 = [-0.9, -0.2, 0.4, 1.1]

SHAPES = {"full": {"ops": 50}, "tiny": {"ops": 12}}


def chain_source(ops: int) -> str:
    """Python source of ``chain(x)``: ``ops`` elementwise ops written out, then ``np.sum``."""
    lines = ["def chain(x):"]
    for i in range(ops):
        op, c = CYCLE[i % len(CYCLE)]
        if op == "mul":
            lines.append(f"    x = x * {c!r}")
        elif op == "add":
            lines.append(f"    x = x + {c!r}")
        else:
            lines.append(f"    x = np.{op}(x)")
    lines.append("    return np.sum(x)")
    return "\n".join(lines) + "\n"


def _exec(source: str, name: str, module):
    namespace = {"np": module}
    exec(compile(source, f"<{name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


def make_chain(module, ops: int):
    """``chain`` compiled with ``np`` bound to ``module`` (numpy, torch or autograd.numpy)."""
    return _exec(chain_source(ops), "chain", module)


#: Backward of each op as code: ``g`` the incoming gradient, ``x`` the op's input, ``y`` its
#: output, ``c`` its constant; (allocating expression, in-place statements with ``t`` scratch).
_BACKWARD = {
    "sin": ("g * np.cos(x)", ["np.cos(x, out=t)", "np.multiply(g, t, out=g)"]),
    "cos": (
        "-g * np.sin(x)",
        ["np.sin(x, out=t)", "np.multiply(g, t, out=g)", "np.negative(g, out=g)"],
    ),
    "exp": ("g * y", ["np.multiply(g, y, out=g)"]),
    "tanh": (
        "g * (1.0 - y * y)",
        ["np.multiply(y, y, out=t)", "np.subtract(1.0, t, out=t)", "np.multiply(g, t, out=g)"],
    ),
    "mul": ("g * c", ["np.multiply(g, c, out=g)"]),
    "add": ("g", []),
}


def handwritten_source(ops: int, inplace: bool) -> str:
    """Source of ``step(x, ...) -> (value, gradient)``: the chain's forward and backward.

    ``inplace``: every result goes into a buffer argument (``b0, b1, ...``, ``g``, ``t``),
    so that a call allocates nothing but the value's scalar.
    """
    bufs = "".join(f", b{i}" for i in range(1, ops + 1)) + ", g, t" if inplace else ""
    lines = [f"def step(b0{bufs}):"]
    for i in range(ops):
        op, c = CYCLE[i % len(CYCLE)]
        a, r = f"b{i}", f"b{i + 1}"
        if op in ("mul", "add") and not inplace:
            expr = f"{a} {'*' if op == 'mul' else '+'} {c!r}"
        elif op in ("mul", "add"):
            expr = f"np.{'multiply' if op == 'mul' else 'add'}({a}, {c!r}, out={r})"
        else:
            expr = f"np.{op}({a}" + (f", out={r})" if inplace else ")")
        lines.append(f"    {expr}" if inplace else f"    {r} = {expr}")
    lines.append(f"    value = np.sum(b{ops})")
    lines.append("    g.fill(1.0)" if inplace else f"    g = np.ones_like(b{ops})")
    for i in reversed(range(ops)):
        op, c = CYCLE[i % len(CYCLE)]
        expr, statements = _BACKWARD[op]
        subs = {"x": f"b{i}", "y": f"b{i + 1}", "c": repr(c)}
        if inplace:
            lines += [f"    {_sub(s, subs)}" for s in statements]
        elif expr != "g":
            lines.append(f"    g = {_sub(expr, subs)}")
    lines.append("    return value, g")
    return "\n".join(lines) + "\n"


def _sub(code: str, subs: dict) -> str:
    import re

    return re.sub(r"\b([xyc])\b", lambda m: subs[m.group(1)], code)


def build(system: str, cfg: Config) -> Bench:
    """One system's forward and backward of the chain."""
    ops = cfg.pick(SHAPES)["ops"]
    x0 = np.array(X0, dtype=np.float64)

    def named(value, g):
        return {"value": f64(value), "x": f64(g)}

    if system in ("numpy-naive", "numpy-best"):
        inplace = system == "numpy-best"
        f = _exec(handwritten_source(ops, inplace), "step", np)
        args = (x0,) + tuple(np.empty_like(x0) for _ in range(ops + 2)) if inplace else (x0,)
        return Bench(lambda: f(*args), lambda: named(*f(*args)))
    if system in ("nnflow-eager", "nnflow-compiled"):
        from nnflow import ad

        f = make_chain(np, ops)
        (x,), sync = nnflow_device(cfg, x0)
        grad = ad.compile_grad(f) if system == "nnflow-compiled" else None

        def run():
            return ad.grad(f, x) if grad is None else grad(x)

        def step():
            out = run()
            sync()
            return out

        def check():
            value, g = run()
            return named(value, g[0])

        return Bench(step, check)
    if system == "torch":
        torch, dev, sync = setup_torch(cfg)
        f = make_chain(torch, ops)
        x = torch.tensor(x0, device=dev, requires_grad=True)

        def run():
            value = f(x)
            return value, torch.autograd.grad(value, x)[0]

        def step():
            out = run()
            sync()
            return out

        return Bench(step, lambda: named(*run()))
    if system == "jax":
        jax, jnp, put = setup_jax(cfg, x64=True)
        f = jax.jit(jax.value_and_grad(make_chain(jnp, ops)))
        x = put(x0)

        def step():
            return jax.block_until_ready(f(x))

        return Bench(step, lambda: named(*step()))
    if system == "autograd":
        import autograd
        import autograd.numpy as anp

        f = autograd.value_and_grad(make_chain(anp, ops))
        return Bench(lambda: f(x0), lambda: named(*f(x0)))
    raise ValueError(f"chain: unknown system {system!r} (known: {', '.join(SYSTEMS)})")
