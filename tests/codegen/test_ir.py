"""codegen.ir: each op says which arrays it reads and writes and which scalars it prints."""

from __future__ import annotations

import pytest
import sympy as sp

from codegen.ir import (
    Buffer,
    CheckFinite,
    I,
    J,
    Loop,
    MatMul,
    OneHot,
    Program,
    Reduce,
    RowOp,
    RowSum,
)

lr, beta, N = sp.Symbol("lr"), sp.Symbol("beta"), sp.Symbol("N", integer=True)
A, B, P, G = (sp.IndexedBase(n) for n in "ABPG")

OPS = {  # op: (reads, writes, scalar symbols)
    "product": (MatMul("C", ("A", True), ("B", False)), {"A", "B"}, {"C"}, set()),
    "product adding into P": (MatMul("P", ("A", False), ("B", True), "", -lr),
                              {"A", "B", "P"}, {"P"}, {lr}),
    "loop with a register": (Loop((3, 4), (("T", beta * A[I, J]), ("P", P[I, J] - lr * B[J])),
                                  frozenset({"T"})),
                             {"A", "B", "P"}, {"P"}, {beta, lr}),
    "loop reading its register": (Loop((3,), (("T", A[I]), ("P", sp.IndexedBase("T")[I] + 1)),
                                       frozenset({"T"})), {"A"}, {"P"}, set()),
    "row sum": (RowSum("db", "dZ"), {"dZ"}, {"db"}, set()),
    "softmax and log-softmax": (RowOp("softmax_log_softmax", "S", ("Z",), "", "logS"),
                                {"Z"}, {"S", "logS"}, set()),
    "reduction": (Reduce("L", (N, 2), (A[I, J] - B[I, J]) ** 2, 1 / N), {"A", "B"}, set(),
                  {N}),
    "one-hot": (OneHot("Y", "indices"), {"indices"}, {"Y"}, set()),
    "finite check": (CheckFinite("L", (("G", 2), ("g", 1))), {"G", "g"}, set(), set()),
}


@pytest.mark.parametrize("op, reads, writes, symbols", OPS.values(), ids=OPS)
def test_each_op_answers_for_itself(op, reads, writes, symbols):
    assert op.reads == reads and op.writes == writes and op.symbols == symbols
    printed = {s for e in op.expressions for s in e.free_symbols if isinstance(s, sp.Symbol)}
    assert symbols <= printed


def test_a_loop_knows_its_index_and_stored_targets_in_order():
    op = OPS["loop with a register"][0]
    assert op.index == (I, J) and op.stored == ("P",)
    assert Loop((3,), (("b", A[I]), ("a", A[I]))).stored == ("b", "a")
    assert OPS["loop reading its register"][0].index == (I,)


def test_a_program_is_guarded_when_it_checks():
    check = OPS["finite check"][0]
    plain = Program("f", (OPS["row sum"][0],), ("dZ", "db"), (), {"db": Buffer("db", (3,))})
    assert not plain.guarded
    assert Program("g", (check, OPS["row sum"][0]), ("G", "g"), ()).guarded
