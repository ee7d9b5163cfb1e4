"""The seed's forward + backprop diagram as a Mermaid ``flowchart TD``.

Forward nodes are linked by the values they read, backward nodes by the gradients they
read (the first from the loss), update nodes by the gradient and temporaries they read.

Example:
    >>> import symnet as sn
    >>> d = sn.derive(sn.Sequential(sn.Linear(4, 8), sn.ReLU(), sn.Linear(8, 3)),
    ...               sn.CrossEntropyLoss())
    >>> d.mermaid().splitlines()[0]
    'flowchart TD'
"""

from __future__ import annotations

import sympy as sp

from symnet.symbolic import printing

# Mermaid's entity codes for what would end a quoted label or read as markup; `#` too, so
# free text such as "#quot;" prints as itself.
ESCAPES = str.maketrans({"#": "#35;", '"': "#quot;", "<": "#lt;", "&": "#amp;"})


def _quote(text: str) -> str:
    return text.translate(ESCAPES)


def mermaid(derivation) -> str:
    """The diagram's Mermaid source (renders on GitHub and in most Markdown viewers)."""
    inputs = derivation.graph.inputs.name
    lines = ["flowchart TD", "", "    %% ---------- Forward Pass ----------",
             f'    {inputs}["Input {inputs}"]']
    forward_nodes = {inputs: inputs}
    backward_nodes: dict[str, str] = {}
    for title, eqs in derivation.sections():
        if title != "Forward":
            lines += ["", f"    %% ---------- {title} ----------"]
        section_nodes: dict[str, str] = {}
        for op, eq in eqs:
            name = eq.lhs.name
            node = {"Forward": name, "Backward": name}.get(title, f"upd_{name}")
            node = "Loss" if name == "L" else node
            text = f"{printing.text(eq.lhs)} {op} {printing.text(eq.rhs)}"
            label = f'{node}["{_quote(("Loss " if name == "L" else "") + text)}"]'
            reads = {s.name for s in eq.rhs.atoms(sp.MatrixSymbol)}
            if title == "Forward":
                sources = [forward_nodes[r] for r in sorted(reads) if r in forward_nodes]
            elif title == "Backward":
                sources = [backward_nodes[r] for r in sorted(reads) if r in backward_nodes]
                sources = sources or ["Loss"]
            else:
                known = {**backward_nodes, **section_nodes}
                sources = [known[r] for r in sorted(reads) if r in known]
            if not sources:
                lines.append(f"    {label}")
            for k, source in enumerate(sources):
                lines.append(f"    {source} --> {label if k == 0 else node}")
            {"Forward": forward_nodes, "Backward": backward_nodes}.get(
                title, section_nodes)[name] = node
    return "\n".join(lines) + "\n"
