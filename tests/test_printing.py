"""Printing (symnet.symbolic.printing, symnet.symbolic.diagram): Unicode text, LaTeX and
Mermaid in the seed's notation."""

from __future__ import annotations

import html
import re

import pytest
import sympy as sp

import symnet as sn
from symnet.symbolic import printing

x = sp.Symbol("x", real=True)


def _derive(activation=sn.Sigmoid, loss=None, optimizer=None, tail=None):
    model = sn.Sequential(sn.Linear(4, 3), activation(), sn.Linear(3, 2), *(tail or []))
    opt = optimizer(model.parameters()) if optimizer else None
    return sn.derive(model, loss or sn.CrossEntropyLoss(reduction="sum"), opt)


# --- text --------------------------------------------------------------------------------

def test_text_of_the_seed_network():
    assert str(_derive()) == "\n".join([
        "Forward",
        "  Z1 = W1·X + b1·1ᵀ",
        "  A1 = σ(Z1)",
        "  Z2 = W2·A1 + b2·1ᵀ",
        "  Ŷ = softmax(Z2)",
        "  L = Σ −Y ⊙ log(Ŷ)",
        "Backward",
        "  dZ2 = Ŷ − Y",
        "  dW2 = dZ2·A1ᵀ",
        "  db2 = dZ2·1",
        "  dA1 = W2ᵀ·dZ2",
        "  dZ1 = dA1 ⊙ A1 ⊙ (1 − A1)",
        "  dW1 = dZ1·Xᵀ",
        "  db1 = dZ1·1",
    ])


def test_mean_loss_and_scale_print():
    text = str(_derive(sn.Tanh, sn.CrossEntropyLoss()))
    assert "L = (1/N)·Σ −Y ⊙ log(Ŷ)" in text and "dZ2 = (Ŷ − Y)/N" in text


@pytest.mark.parametrize("name, shown", [
    ("dYhat", "dŶ"), ("mhatW1", "m̂W1"), ("vhatb2", "v̂b2"), ("lr", "η"), ("beta1", "β₁"),
    ("W1", "W1"), ("dZ10", "dZ10"),
])
def test_display_names(name, shown):
    assert printing.display_name(name, printing.NAMES) == shown


def test_text_of_matrix_expressions():
    A, G, W = sp.MatrixSymbol("A1", 3, 2), sp.MatrixSymbol("dZ2", 4, 2), sp.MatrixSymbol(
        "W2", 4, 3)
    assert printing.text(G * A.T) == "dZ2·A1ᵀ"
    assert printing.text(W.T * G) == "W2ᵀ·dZ2"
    assert printing.text(G * sp.OneMatrix(2, 1)) == "dZ2·1"


def test_sgd_updates_print():
    text = str(_derive(optimizer=lambda ps: sn.optim.SGD(ps, lr=0.1)))
    assert "Update (SGD)" in text
    for line in ["W1 ← W1 − η·dW1", "b1 ← b1 − η·db1", "W2 ← W2 − η·dW2", "b2 ← b2 − η·db2"]:
        assert f"  {line}" in text.splitlines()


def test_adam_updates_print():
    lines = str(_derive(optimizer=sn.optim.Adam)).splitlines()
    for line in ["mW1 ← β₁·mW1 + (1 − β₁)·dW1", "vW1 ← β₂·vW1 + (1 − β₂)·dW1²",
                 "m̂W1 = mW1/(1 − β₁ᵗ)", "v̂W1 = vW1/(1 − β₂ᵗ)", "W1 ← W1 − η·m̂W1/(ε + √v̂W1)"]:
        assert f"  {line}" in lines


# --- LaTeX -------------------------------------------------------------------------------

def _balanced(s: str, pairs=("{}", "()", "[]")) -> bool:
    for open_, close in pairs:
        depth = 0
        for ch in s:
            depth += (ch == open_) - (ch == close)
            if depth < 0:
                return False
        if depth:
            return False
    return True


#: a braced superscript (or a one-character one) followed directly by another superscript
DOUBLE_SUPERSCRIPT = re.compile(r"\^(\{(?:[^{}]|\{[^{}]*\})*\}|\w)\s*\^")

ACTIVATIONS = [sn.ReLU, sn.Sigmoid, sn.Tanh, lambda: sn.LeakyReLU(0.2), sn.Softplus, sn.SiLU,
               sn.GELU, lambda: sn.Activation("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x)]
LOSSES = [(sn.MSELoss(), None), (sn.CrossEntropyLoss(), None), (sn.BCEWithLogitsLoss(), None),
          (sn.NLLLoss(), [sn.LogSoftmax()]), (sn.BCELoss(), [sn.Sigmoid()])]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss, tail", LOSSES)
def test_latex_is_well_formed(activation, loss, tail):
    d = _derive(activation, loss, sn.optim.Adam, tail)
    tex = d.latex()
    assert tex.startswith("\\begin{aligned}\n") and tex.endswith("\n\\end{aligned}")
    body = tex.replace(r"\left(", "(").replace(r"\right)", ")").replace(r"\left[", "[")
    body = body.replace(r"\right]", "]")
    assert _balanced(body), tex
    assert not DOUBLE_SUPERSCRIPT.search(tex), DOUBLE_SUPERSCRIPT.search(tex)
    assert "__operand" not in tex
    rows = tex.splitlines()[1:-1]
    assert all(row.endswith(r" \\") for row in rows)
    equations = [row for row in rows if not row.startswith(r"&\textbf")]
    assert len(equations) == len(d.forward) + len(d.backward) + len(d.updates)
    for row in equations:
        outside_cases = re.sub(r"\\begin\{cases\}.*?\\end\{cases\}", "", row)
        assert outside_cases.count("&") == 1, row
        assert _balanced(row.replace(r"\left(", "(").replace(r"\right)", ")")), row


def test_latex_of_the_seed_backprop():
    tex = _derive().latex()
    assert r"\mathrm{d}Z^{(1)} &= \mathrm{d}A^{(1)} \odot A^{(1)} \odot (1 - A^{(1)}) \\" in tex
    assert r"\mathrm{d}W^{(2)} &= \mathrm{d}Z^{(2)} \left(A^{(1)}\right)^{T} \\" in tex
    assert r"\hat{Y} &= \operatorname{softmax}\left(Z^{(2)}\right) \\" in tex


def test_latex_powers_of_superscripted_names_are_braced():
    tex = _derive(sn.Tanh, optimizer=sn.optim.Adam).latex()
    assert r"\left(A^{(1)}\right)^{2}" in tex
    assert r"\left(\mathrm{d}W^{(1)}\right)^{2}" in tex


def test_latex_fraction_keeps_inner_parentheses():
    d = sn.derive(sn.Sequential(sn.Linear(2, 3)), sn.MSELoss())
    assert printing.text(d.backward[0].rhs) == "2·(Ŷ − Y)/(3·N)"
    assert printing.latex(d.backward[0].rhs) == r"\frac{2 \cdot (\hat{Y} - Y)}{3 \cdot N}"


def test_latex_updates_use_leftarrow():
    tex = _derive(optimizer=lambda ps: sn.optim.SGD(ps, lr=0.1)).latex()
    assert r"W^{(1)} &\leftarrow W^{(1)} - \eta \cdot \mathrm{d}W^{(1)} \\" in tex


# --- Mermaid -------------------------------------------------------------------------------

NODE = r"[A-Za-z_][\w]*"
LINE = re.compile(rf'^    (?:({NODE}) --> )?({NODE})(?:\["([^"]*)"\])?$')


def _graph(source: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    labels, edges = {}, set()
    lines = source.splitlines()
    assert lines[0] == "flowchart TD"
    for line in lines[1:]:
        if not line.strip() or line.strip().startswith("%%"):
            continue
        match = LINE.match(line)
        assert match, f"not a Mermaid node or edge: {line!r}"
        source_node, node, label = match.groups()
        if label is not None:
            assert node not in labels, f"{node} labelled twice"
            labels[node] = label
        if source_node:
            assert source_node in labels, f"{source_node} used before it is defined"
            edges.add((source_node, node))
    assert all(target in labels for _, target in edges)
    return labels, edges


def test_mermaid_matches_the_seed_diagram():
    labels, edges = _graph(_derive(sn.ReLU).mermaid())
    assert set(labels) == {"X", "Z1", "A1", "Z2", "Yhat", "Loss", "dZ2", "dW2", "db2", "dA1",
                           "dZ1", "dW1", "db1"}
    seed = {("X", "Z1"), ("Z1", "A1"), ("A1", "Z2"), ("Z2", "Yhat"), ("Yhat", "Loss"),
            ("Loss", "dZ2"), ("dZ2", "dW2"), ("dZ2", "db2"), ("dZ2", "dA1"), ("dA1", "dZ1"),
            ("dZ1", "dW1"), ("dZ1", "db1")}
    assert seed <= edges
    assert labels["dZ1"] == "dZ1 = dA1 ⊙ (Z1 > 0)"
    assert labels["dW2"] == "dZ2·A1ᵀ".join(["dW2 = ", ""])
    assert labels["Loss"].startswith("Loss L = ")


def test_mermaid_with_optimizer_and_deeper_model():
    model = sn.Sequential(sn.Linear(4, 3), sn.Tanh(), sn.Linear(3, 3), sn.Tanh(),
                          sn.Linear(3, 2))
    d = sn.derive(model, sn.MSELoss(), sn.optim.Adam(model.parameters()))
    labels, edges = _graph(d.mermaid())
    assert {("Loss", "dYhat"), ("dYhat", "dW3"), ("dA2", "dZ2"), ("dZ1", "dW1")} <= edges
    assert ("dW1", "upd_mW1") in edges and ("upd_mhatW1", "upd_W1") in edges
    assert labels["upd_W1"] == "W1 ← W1 − η·m̂W1/(ε + √v̂W1)"


def test_mermaid_escapes_quotes():
    quoted = sn.Activation("square", x**2, x, label='say "hi"')
    model = sn.Sequential(sn.Linear(2, 2), quoted, sn.Linear(2, 2))
    source = sn.derive(model, sn.MSELoss()).mermaid()
    labels, _ = _graph(source)  # every label still parses
    assert labels["A1"] == "A1 = say #quot;hi#quot;(Z1)"


# --- labels are free text: shown as themselves, never read as markup or as a new line ---

HOSTILE = r"\input{/etc/passwd}\write18{touch /tmp/pwned}"


def _labelled(label: str) -> sn.Derivation:
    model = sn.Sequential(sn.Linear(2, 2), sn.Activation("square", x**2, x, label=label),
                          sn.Linear(2, 2))
    return sn.derive(model, sn.MSELoss())


@pytest.mark.parametrize("label", ["two\nlines", "carriage\rreturn", "tab\there", "\x1b[2J",
                                   "rtl\u202eoverride", "line\u2028separator"])
@pytest.mark.parametrize("declare", [
    lambda label: sn.Activation("square", x**2, x, label=label),
    lambda label: sn.Loss("quartic", (x - sp.Symbol("t")) ** 4, x, sp.Symbol("t"), label=label),
], ids=["Activation", "Loss"])
def test_a_label_with_a_control_character_is_refused(declare, label):
    with pytest.raises(ValueError, match="label .* must be printable text"):
        declare(label)


def test_a_label_must_be_text():
    with pytest.raises(TypeError, match="label must be a str"):
        sn.Activation("square", x**2, x, label=sp.Symbol("q"))


# LaTeX for each label, written by hand: what TeX typesets as the label's own characters.
@pytest.mark.parametrize("label, tex", [
    ("ReLU", r"\operatorname{ReLU}"),
    ("σ", r"\sigma"),
    ("log_cosh", r"\operatorname{log\_cosh}"),
    ("50% & $5 #1", r"\operatorname{50\%\ \&\ \$5\ \#1}"),
    ("a^b~c", r"\operatorname{a\hat{}b\sim{}c}"),
    (r"\input{x}", r"\operatorname{\backslash{}input\{x\}}"),
])
def test_a_label_prints_as_itself_in_latex(label, tex):
    assert rf"A^{{(1)}} &= {tex}\left(Z^{{(1)}}\right) \\" in _labelled(label).latex()


def test_a_hostile_label_is_no_latex_command():
    tex = _labelled(HOSTILE).latex()
    # TeX's own reading: a backslash takes a run of letters, or any one other character.
    tokens = re.findall(r"\\(?:[A-Za-z]+|.)", tex, flags=re.DOTALL)
    assert not {r"\input", r"\write"} & set(tokens), tokens
    groups = re.sub(r"\\.", "", tex, flags=re.DOTALL)  # drop \{ and \}: not group braces
    assert _balanced(groups, ("{}",))  # the label closes no group it did not open


def test_a_label_set_after_construction_still_cannot_forge_a_line():
    # The printers escape each label too: the attribute can be set to anything later.
    model = sn.Sequential(sn.Linear(2, 2), sn.Tanh(), sn.Linear(2, 2))
    plain = sn.derive(model, sn.MSELoss())
    model.layers()[1].label = 'x"]\nBackward\n    Loss ==> X["'
    forged = sn.derive(model, sn.MSELoss())
    assert len(str(forged).splitlines()) == len(str(plain).splitlines())
    assert "  A1 = " + r'x"]\nBackward\n    Loss ==> X["' + "(Z1)" in str(forged).splitlines()
    assert len(forged.mermaid().splitlines()) == len(plain.mermaid().splitlines())
    labels, _ = _graph(forged.mermaid())  # one node or edge per line, every label parses
    assert set(labels) == set(_graph(plain.mermaid())[0])


def test_mermaid_labels_show_their_text_and_no_markup():
    label = 'x"] ==> Loss["<b>bold</b> & #quot; #35;'
    labels, edges = _graph(_labelled(label).mermaid())
    assert "<" not in labels["A1"] and ("A1", "Loss") not in edges
    # Mermaid turns #name; into the HTML entity &name; (its docs, "Entity codes").
    shown = html.unescape(re.sub(r"#(\w+);", lambda m: "&" + (
        "#" + m[1] if m[1].isdigit() else m[1]) + ";", labels["A1"]))
    assert shown == f"A1 = {label}(Z1)"
