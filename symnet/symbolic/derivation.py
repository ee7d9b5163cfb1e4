"""A derived network: forward, backward and update equations, printable and verifiable.

Example:
    >>> import symnet as sn
    >>> d = sn.derive(sn.Sequential(sn.Linear(3, 2)), sn.MSELoss(reduction="sum"))
    >>> print(d.backward[0].lhs)
    dYhat
"""

from __future__ import annotations

import sympy as sp

from symnet.symbolic import diagram, printing
from symnet.symbolic import verify as verification


class Derivation:
    """The equations of one (model, loss, optimizer): ``forward``, ``backward``, ``updates``.

    Every list holds ``sympy.Eq`` whose left side is a named ``MatrixSymbol`` (the loss
    ``L`` is a scalar ``Symbol``).  In ``updates``, a left side that is a parameter or an
    optimizer buffer is assigned in place (printed ``←``); the others are temporaries.
    """

    def __init__(self, graph, backward: list[sp.Eq], updates: list[sp.Eq], optimizer=None):
        self.graph = graph
        self.forward: list[sp.Eq] = list(graph.forward)
        self.backward: list[sp.Eq] = list(backward)
        self.updates: list[sp.Eq] = list(updates)
        self.optimizer = optimizer

    # --- what is what --------------------------------------------------------------------
    def state_symbols(self) -> set[str]:
        """Names assigned in place by the updates: parameters and optimizer buffers."""
        prefixes = getattr(self.optimizer, "state_prefixes", ())
        params = set(self.graph.params)
        return params | {pre + name for pre in prefixes for name in params} | \
            set(self.graph.buffers)

    def sections(self) -> list[tuple[str, list[tuple[str, sp.Eq]]]]:
        state = self.state_symbols()
        out = [("Forward", [("=", eq) for eq in self.forward]),
               ("Backward", [("=", eq) for eq in self.backward])]
        if self.updates:
            title = f"Update ({type(self.optimizer).__name__})" if self.optimizer else \
                "Update (running statistics)"
            out.append((title, [("←" if eq.lhs.name in state else "=", eq)
                                for eq in self.updates]))
        return out

    # --- printing ------------------------------------------------------------------------
    def __str__(self) -> str:
        lines = []
        for title, eqs in self.sections():
            lines.append(title)
            lines += [f"  {printing.text(eq.lhs)} {op} {printing.text(eq.rhs)}" for op, eq in eqs]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<Derivation: {len(self.forward)} forward, {len(self.backward)} backward, "
                f"{len(self.updates)} update equations>")

    def latex(self) -> str:
        """All equations as one LaTeX ``aligned`` block.

        Example:
            >>> import symnet as sn
            >>> d = sn.derive(sn.Sequential(sn.Linear(3, 2)), sn.MSELoss())
            >>> d.latex().startswith(r"\\begin{aligned}")
            True
        """
        rows = []
        for title, eqs in self.sections():
            rows.append(rf"&\textbf{{{title}}} \\")
            for op, eq in eqs:
                sign = r"\leftarrow" if op == "←" else "="
                rows.append(rf"{printing.latex(eq.lhs)} &{sign} {printing.latex(eq.rhs)} \\")
        return "\\begin{aligned}\n" + "\n".join(rows) + "\n\\end{aligned}"

    def mermaid(self) -> str:
        """A ``flowchart TD`` of the forward and backward pass, like the seed's diagram."""
        return diagram.mermaid(self)

    # --- Jupyter -------------------------------------------------------------------------
    def _repr_latex_(self) -> str:
        """The equations as display math, which Jupyter renders with MathJax.

        Example:
            >>> import symnet as sn
            >>> tex = sn.derive(sn.Sequential(sn.Linear(3, 2)), sn.MSELoss())._repr_latex_()
            >>> tex.startswith(r"$$\\begin{aligned}") and tex.endswith(r"\\end{aligned}$$")
            True
        """
        return f"$${self.latex()}$$"

    def _repr_markdown_(self) -> str:
        """The equations as display math, then the diagram in a ``mermaid`` block (rendered by
        JupyterLab 4.1+, GitHub and most Markdown viewers).

        Example:
            >>> import symnet as sn
            >>> md = sn.derive(sn.Sequential(sn.Linear(3, 2)), sn.MSELoss())._repr_markdown_()
            >>> md.splitlines()[-1], "```mermaid" in md.splitlines()
            ('```', True)
        """
        return f"{self._repr_latex_()}\n\n```mermaid\n{self.mermaid().rstrip()}\n```"

    # --- checking ------------------------------------------------------------------------
    def verify(self, **options):
        """Prove every backward equation equal to ``sympy.diff`` of the scalar loss.

        Returns a `symnet.symbolic.verify.Report`; it is truthy when every equation holds.

        Example:
            >>> import symnet as sn
            >>> bool(sn.derive(sn.Sequential(sn.Linear(2, 2)), sn.MSELoss()).verify())
            True
        """
        return verification.verify(self, **options)

    def gradcheck(self, **options):
        """Compare the derived gradients with float64 central differences (a Report)."""
        return verification.gradcheck(self, **options)
