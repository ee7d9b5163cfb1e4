"""A user-defined activation and loss: declared as SymPy formulas, derived, printed, verified.

Mish, ``x·tanh(softplus(x))``, is not built in; neither is the log-cosh loss.  Each is one
line of SymPy; symnet derives their backprop equations, prints them, proves every gradient
equal to ``sympy.diff`` of the scalar loss and checks it against central differences.

Run:
    python examples/custom_activation.py            # Unicode text
    python examples/custom_activation.py --latex    # LaTeX instead

Exits with status 1 if any check fails.
"""

from __future__ import annotations

import sys

import sympy as sp

import symnet as sn

x = sp.Symbol("x")
mish = sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x)

prediction, target = sp.symbols("p t")
log_cosh = sn.Loss("log_cosh", sp.log(sp.cosh(prediction - target)), prediction, target)


def main(argv: list[str]) -> int:
    sn.manual_seed(0)
    model = sn.Sequential(sn.Linear(2, 8), mish, sn.Linear(8, 1))
    derivation = sn.derive(model, log_cosh, sn.optim.Adam(model.parameters(), lr=1e-2))
    print(derivation.latex() if "--latex" in argv else derivation)
    print()
    proof = derivation.verify()
    numeric = derivation.gradcheck()
    print(proof)
    print(numeric)
    return 0 if proof and numeric else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
