"""Declaration errors: activations, losses and layers refuse bad input in the user's words."""

from __future__ import annotations

import pytest
import sympy as sp

import symnet as sn

x, y, z = sp.symbols("x y z")
p, t = sp.symbols("p t")


# --- activations ---------------------------------------------------------------------------

def test_activation_with_a_second_free_symbol():
    with pytest.raises(ValueError, match="free symbols y besides x"):
        sn.Activation("scaled", y * sp.tanh(x), x)


def test_activation_not_depending_on_its_variable():
    with pytest.raises(ValueError, match="does not depend on x"):
        sn.Activation("constant", sp.Integer(3), x)
    with pytest.raises(ValueError, match="besides x"):
        sn.Activation("other", sp.tanh(z), x)


@pytest.mark.parametrize("name", [
    "x); import os; os.system('echo hi')#", "two words", "1st", "", "class", "mish-2",
])
def test_activation_name_must_be_an_identifier(name):
    with pytest.raises(ValueError, match="not a valid Python identifier"):
        sn.Activation(name, x**2, x)


def test_activation_name_must_be_a_string():
    with pytest.raises(ValueError, match="identifier"):
        sn.Activation(None, x**2, x)


def test_activation_must_be_scalar():
    with pytest.raises(TypeError, match="scalar"):
        sn.Activation("matrix", sp.Matrix([[x, x**2]]), x)
    with pytest.raises(TypeError, match="scalar"):
        sn.Activation("msym", sp.MatrixSymbol("M", 2, 2), x)


def test_activation_variable_must_be_a_symbol():
    with pytest.raises(TypeError, match="Symbol"):
        sn.Activation("square", x**2, "x")


def test_activation_accepts_any_symbol_and_normalises_it():
    a = sn.Activation("square", z**2 + 1, z)
    b = sn.Activation("square", x**2 + 1, x)
    assert a.expr == b.expr and a.expr.free_symbols == {a.var}
    assert a.var.is_real


@pytest.mark.parametrize(("expr", "pattern"), [
    (sp.Sum(x * z, (z, 1, 3)), r"expression binds z \(a Sum, Integral or similar\); it must be a "
                               r"closed-form function of x"),
    (sp.Integral(sp.exp(-z * x), (z, 0, 1)), r"expression binds z"),
    (sp.Function("f")(x), r"SymPy cannot differentiate it with respect to x"),
    (sp.lowergamma(x, 2), r"codegen cannot print it as kernel code .*lowergamma"),
])
def test_activation_must_be_closed_form_differentiable_and_printable(expr, pattern):
    with pytest.raises(ValueError, match=r"activation 'act': " + pattern):
        sn.Activation("act", expr, x)


def test_loss_must_be_closed_form():
    with pytest.raises(ValueError, match=r"loss 'summed': expression binds z"):
        sn.Loss("summed", sp.Sum((p - t) ** z, (z, 1, 2)), p, t)


# --- losses --------------------------------------------------------------------------------

def test_loss_with_extra_symbols():
    with pytest.raises(ValueError, match="free symbols z besides p and t"):
        sn.Loss("weighted", z * (p - t) ** 2, p, t)


def test_loss_not_depending_on_the_prediction():
    with pytest.raises(ValueError, match="does not depend on the prediction p"):
        sn.Loss("target_only", t**2, p, t)


@pytest.mark.parametrize("reduction", ["avg", "none", "MEAN", None])
def test_loss_bad_reduction(reduction):
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        sn.Loss("sq", (p - t) ** 2, p, t, reduction=reduction)


@pytest.mark.parametrize("make", [sn.MSELoss, sn.CrossEntropyLoss, sn.NLLLoss, sn.BCELoss,
                                  sn.BCEWithLogitsLoss])
def test_builtin_loss_bad_reduction(make):
    with pytest.raises(ValueError, match="reduction"):
        make(reduction="avg")


def test_loss_name_and_symbols():
    with pytest.raises(ValueError, match="identifier"):
        sn.Loss("x); import os#", (p - t) ** 2, p, t)
    with pytest.raises(ValueError, match="different symbols"):
        sn.Loss("same", p**2, p, p)
    with pytest.raises(TypeError, match="pred must be a sympy.Symbol"):
        sn.Loss("sq", (p - t) ** 2, "p", t)
    with pytest.raises(TypeError, match="scalar"):
        sn.Loss("vec", sp.Matrix([p - t]), p, t)


def test_loss_sympy_cannot_differentiate():
    f = sp.Function("f")
    with pytest.raises(ValueError, match="SymPy cannot differentiate it with respect to p"):
        sn.Loss("unknown", f(p) - t, p, t)


# --- layers --------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [(0, 3), (3, 0), (-1, 3), (3, -2), (True, 3), (3, False),
                                   (2.0, 3), ("3", 3), (None, 3)])
def test_linear_rejects_bad_sizes(sizes):
    with pytest.raises(ValueError, match="positive integer"):
        sn.Linear(*sizes)


def test_linear_after_a_mismatched_width_names_the_layer():
    model = sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(7, 3))
    with pytest.raises(ValueError, match=r"Linear\(7, 3\) \(layer 2\) receives 8 features"):
        sn.derive(model, sn.CrossEntropyLoss())


def test_sequential_rejects_non_modules():
    with pytest.raises(TypeError, match="argument 1 is function"):
        sn.Sequential(sn.Linear(2, 2), lambda v: v)


def test_unknown_module_has_no_symbolic_form():
    class Dropout(sn.Module):
        pass

    with pytest.raises(TypeError, match="Dropout has no symbolic form"):
        sn.derive(sn.Sequential(sn.Linear(2, 2), Dropout()), sn.MSELoss())
