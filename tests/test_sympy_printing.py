"""SymPy's own printers on the equation language (codegen.expr's printer hooks), and a
Derivation's Jupyter displays (symnet.symbolic.derivation).

Every equation of a derivation prints through ``str``, ``sympy.pretty`` and ``sympy.latex``
as its formula, with the operands' names.  The expectations are formulas written out by hand
and printed by SymPy itself, with plain symbols for the matrices.
"""

from __future__ import annotations

import re

import pytest
import sympy as sp

import symnet as sn
from codegen.expr import Elementwise, LogSoftmax, Softmax, SoftmaxVJP, Total

#: what an equation printed as its internals would show: the body's variables, its Lambda
INTERNAL = ("_e0", "_e1", "Lambda", "Elementwise", "_a", "_g", "Total(", "SoftmaxVJP",
            "Softmax(", "__operand")
#: undefined functions a printed formula may call
FUNCTIONS = {name: sp.Function(name) for name in ("sum", "colsum", "softmax", "log_softmax")}

MODELS = {  # name: (activation, loss, layers after the last Linear)
    "sigmoid-mse": (sn.Sigmoid, sn.MSELoss(), ()),
    "tanh-cross-entropy": (sn.Tanh, sn.CrossEntropyLoss(), ()),
    "relu-bce-with-logits": (sn.ReLU, sn.BCEWithLogitsLoss(), ()),
    "sigmoid-cross-entropy-sum": (sn.Sigmoid, sn.CrossEntropyLoss(reduction="sum"), ()),
    "relu-mse-softmax": (sn.ReLU, sn.MSELoss(), (sn.Softmax,)),
    "tanh-nll-log-softmax": (sn.Tanh, sn.NLLLoss(), (sn.LogSoftmax,)),
}


def _derive(name: str) -> sn.Derivation:
    activation, loss, tail = MODELS[name]
    model = sn.Sequential(sn.Linear(4, 3), activation(), sn.Linear(3, 2), *(t() for t in tail))
    return sn.derive(model, loss, sn.optim.Adam(model.parameters()))


def _equations(d: sn.Derivation) -> dict[str, sp.Eq]:
    return {eq.lhs.name: eq for eq in d.forward + d.backward + d.updates}


def _parse(formula: str, names) -> sp.Expr:
    """``formula`` as SymPy reads it, every name a plain symbol (``N`` too, not sympy.N)."""
    local = {**{n: sp.Symbol(n) for n in names}, **FUNCTIONS}
    return sp.parse_expr(formula, local_dict=local)


def _names(expr: sp.Basic) -> set[str]:
    return {s.name for s in expr.free_symbols} | {m.name for m in expr.atoms(sp.MatrixSymbol)}


def _balanced(tex: str) -> bool:
    depth = {"{}": 0, "()": 0}
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        for pair in depth:
            depth[pair] += (ch == pair[0]) - (ch == pair[1])
            if depth[pair] < 0:
                return False
    return not any(depth.values()) and tex.count(r"\left") == tex.count(r"\right")


# --- no internals, in any printer ----------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("printer", [str, sp.pretty, sp.latex], ids=["str", "pretty", "latex"])
def test_no_equation_prints_its_internals(model, printer):
    for name, eq in _equations(_derive(model)).items():
        out = printer(eq.rhs)
        assert not [word for word in INTERNAL if word in out], (name, out)


@pytest.mark.parametrize("model", MODELS)
def test_latex_of_every_equation_is_balanced(model):
    for name, eq in _equations(_derive(model)).items():
        tex = sp.latex(eq.rhs)
        assert _balanced(tex), (name, tex)
        assert "σ" not in tex, (name, tex)  # a Greek label is a TeX command


# --- the printed formula is the equation ----------------------------------------------------

def _as_scalars(expr: sp.Basic) -> sp.Expr:
    """The formula ``expr`` means, built from its parts without any printer: a named matrix
    as a plain symbol, an elementwise body applied to its operands, a total as ``sum``."""
    if isinstance(expr, sp.MatrixSymbol):
        return sp.Symbol(expr.name)
    if isinstance(expr, Elementwise):
        return expr.body(*map(_as_scalars, expr.operands))
    if isinstance(expr, Total):
        return FUNCTIONS["sum"](_as_scalars(expr.matrix))
    if isinstance(expr, (Softmax, LogSoftmax)):
        return FUNCTIONS[expr.label](_as_scalars(expr.args[0]))
    if isinstance(expr, sp.Symbol):
        return sp.Symbol(expr.name)
    if isinstance(expr, sp.Expr) and expr.args:
        return expr.func(*map(_as_scalars, expr.args))
    return expr


def _plain(expr: sp.Expr) -> sp.Expr:
    return expr.xreplace({s: sp.Symbol(s.name) for s in expr.free_symbols})


@pytest.mark.parametrize("model", MODELS)
def test_str_reads_back_as_the_equation(model):
    """``sympify(str(rhs))``, every operand a symbol, is the body applied to those symbols."""
    for name, eq in _equations(_derive(model)).items():
        if not eq.rhs.has(Elementwise, Total, Softmax, LogSoftmax) or \
                isinstance(eq.rhs, Elementwise) and eq.rhs.label:
            continue
        expected = _plain(_as_scalars(eq.rhs))
        parsed = _parse(str(eq.rhs), _names(eq.rhs) | _names(expected))
        assert sp.simplify(parsed - expected) == 0, (name, str(eq.rhs), expected)


#: (model, equation, formula written by hand from the textbook)
FORMULAS = [
    ("sigmoid-cross-entropy-sum", "dZ2", "Yhat - Y"),
    ("sigmoid-cross-entropy-sum", "dZ1", "dA1*A1*(1 - A1)"),
    ("sigmoid-cross-entropy-sum", "L", "sum(-Y*log(Yhat))"),
    ("tanh-cross-entropy", "dZ2", "(Yhat - Y)/N"),
    ("tanh-cross-entropy", "dZ1", "dA1*(1 - A1**2)"),
    ("tanh-cross-entropy", "Yhat", "softmax(Z2)"),
    ("relu-bce-with-logits", "dZ2", "(Yhat - Y)/(2*N)"),
    ("relu-bce-with-logits", "L", "sum(log(1 + exp(Z2)) - Y*Z2)/(2*N)"),
    ("relu-bce-with-logits", "dZ1", "dA1*Heaviside(Z1)"),
    ("sigmoid-mse", "dYhat", "(Yhat - Y)/N"),  # 2·(Ŷ − Y)/(C·N), C = 2 outputs
    ("sigmoid-mse", "L", "sum((Yhat - Y)**2)/(2*N)"),
    ("relu-mse-softmax", "dZ2", "Yhat*(dYhat - colsum(Yhat*dYhat))"),
    ("tanh-nll-log-softmax", "Yhat", "log_softmax(Z2)"),
    ("tanh-nll-log-softmax", "dZ2", "(exp(Yhat) - Y)/N"),
    ("sigmoid-mse", "mW1", "beta1*mW1 + (1 - beta1)*dW1"),
    ("sigmoid-mse", "vW1", "beta2*vW1 + (1 - beta2)*dW1**2"),
    ("sigmoid-mse", "mhatW1", "mW1/(1 - beta1**t)"),
    ("sigmoid-mse", "vhatb2", "vb2/(1 - beta2**t)"),
    ("sigmoid-mse", "W1", "W1 - lr*mhatW1/(sqrt(vhatW1) + eps)"),
]


@pytest.mark.parametrize("model, name, formula", FORMULAS)
def test_equation_prints_as_its_formula_in_every_printer(model, name, formula):
    """Exactly as SymPy prints the hand-written formula of plain symbols."""
    rhs = _equations(_derive(model))[name].rhs
    expected = _parse(formula, _names(rhs) | {"t"})
    assert str(rhs) == str(expected)
    assert sp.pretty(rhs) == sp.pretty(expected)
    assert sp.pretty(rhs, use_unicode=False) == sp.pretty(expected, use_unicode=False)
    if not rhs.has(Total, Softmax, LogSoftmax, SoftmaxVJP):  # those print \left( … \right)
        assert sp.latex(rhs) == sp.latex(expected)


@pytest.mark.parametrize("model, name, text, tex", [
    ("sigmoid-mse", "A1", "σ(Z1)", r"\sigma\left(Z_{1}\right)"),
    ("tanh-cross-entropy", "A1", "tanh(Z1)", r"\tanh\left(Z_{1}\right)"),
    ("relu-bce-with-logits", "A1", "ReLU(Z1)", r"\operatorname{ReLU}\left(Z_{1}\right)"),
    ("relu-bce-with-logits", "Yhat", "σ(Z2)", r"\sigma\left(Z_{2}\right)"),
    ("tanh-cross-entropy", "Yhat", "softmax(Z2)", r"\operatorname{softmax}\left(Z_{2}\right)"),
    ("tanh-nll-log-softmax", "Yhat", "log_softmax(Z2)",
     r"\operatorname{log\_softmax}\left(Z_{2}\right)"),
    ("tanh-cross-entropy", "L", "sum(-Y*log(Yhat))/N",
     r"\frac{\operatorname{sum}\left(- Y \log{\left(\hat{Y} \right)}\right)}{N}"),
])
def test_a_labelled_function_prints_by_name(model, name, text, tex):
    rhs = _equations(_derive(model))[name].rhs
    assert (str(rhs), sp.latex(rhs)) == (text, tex)
    assert sp.pretty(rhs).startswith(text.split("(")[0])


@pytest.mark.parametrize("label, tex", [
    ("leaky_relu", r"\operatorname{leaky\_relu}"), (r"\input{f}", r"\operatorname{\backslash{}"
                                                    r"input\{f\}}"), ("λ", r"\lambda"),
    ("Σ", r"\Sigma"), ("a\nb", r"\operatorname{a\backslash{}nb}"),
])
def test_free_text_labels_print_as_themselves(label, tex):
    x = sp.Symbol("x", real=True)
    A = Elementwise(sp.Lambda(x, x**2), sp.MatrixSymbol("Z", 2, 3), label=label)
    assert sp.latex(A) == tex + r"\left(Z\right)"
    assert "\n" not in str(A) and "\n" not in sp.pretty(A)


# --- operands that are expressions ------------------------------------------------------------

N = sp.Symbol("N", integer=True, positive=True)
b, r = sp.MatrixSymbol("b1", 3, 1), sp.MatrixSymbol("r", 1, N)
G, A = sp.MatrixSymbol("dA1", 3, N), sp.MatrixSymbol("A1", 3, N)
u, v = sp.symbols("u v", real=True)


def test_a_broadcast_operand_prints_as_the_matrix_it_repeats():
    """``b·1ᵀ`` reads as ``b`` and ``1·r`` as ``r``, as the textbook writes them; any other
    operand that is not a named matrix prints as its expression in parentheses."""
    e = Elementwise(sp.Lambda((u, v), u * (1 - v**2)), b * sp.OneMatrix(1, N),
                    sp.OneMatrix(3, 1) * r)
    assert str(e) == "b1*(1 - r**2)"
    assert sp.latex(e) == r"b_{1} \left(1 - r^{2}\right)"
    WV = sp.MatrixSymbol("W", 3, 2) * sp.MatrixSymbol("V", 2, N)
    product = Elementwise(sp.Lambda((u, v), u * (1 - v**2)), WV, sp.OneMatrix(3, 1) * r)
    assert str(product) == "(W*V)*(1 - r**2)"


def test_a_printed_sum_inside_a_product_is_parenthesised():
    W = sp.MatrixSymbol("W2", 2, 3)
    difference = Elementwise(sp.Lambda((u, v), u - v), A, G)
    assert str(W * difference) == "W2*(A1 - dA1)"
    assert sp.latex(W * difference) == r"W_{2} \left(A_{1} - dA_{1}\right)"


def test_symnet_printers_keep_their_own_notation():
    """The hooks defer to a printer's ``_print_<Class>``: symnet's text is unchanged."""
    d = _derive("tanh-cross-entropy")
    assert "  dZ1 = dA1 ⊙ (1 − A1²)" in str(d).splitlines()
    assert r"\mathrm{d}Z^{(1)} &= \mathrm{d}A^{(1)} \odot" in d.latex()


# --- Jupyter ---------------------------------------------------------------------------------

def test_repr_latex_is_the_aligned_block_as_display_math():
    d = _derive("sigmoid-mse")
    tex = d._repr_latex_()
    assert tex == f"$${d.latex()}$$"
    assert tex.startswith(r"$$\begin{aligned}") and tex.endswith(r"\end{aligned}$$")
    assert tex.count("$$") == 2


def test_repr_markdown_has_the_equations_and_the_diagram():
    d = _derive("tanh-cross-entropy")
    md = d._repr_markdown_()
    assert md.startswith(d._repr_latex_() + "\n\n")
    fenced = re.findall(r"^```(\w*)\n(.*?)^```$", md, flags=re.MULTILINE | re.DOTALL)
    assert fenced == [("mermaid", d.mermaid().rstrip() + "\n")]
    assert md.endswith("\n```")
