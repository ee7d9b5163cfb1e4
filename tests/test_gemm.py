"""symnet's own float32 GEMM (codegen/gemm.py) against float64 NumPy, its blocks and edges,
its splits (bit for bit), the OpenBLAS dispatch below OWN_MIN, and the choice of library."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from codegen import blas

pytestmark = pytest.mark.skipif(not blas.avx512(), reason="the tile needs AVX-512")

if blas.avx512():
    from codegen import gemm


def _operands(rng, m, n, k, ta, tb, pad=0):
    """op(A) m × k and op(B) k × n as stored (transposed where ta/tb), each row ``pad``
    entries longer than its width, so that leading dimensions exceed widths."""
    a = rng.standard_normal((k, m + pad) if ta else (m, k + pad), dtype=np.float32)
    b = rng.standard_normal((n, k + pad) if tb else (k, n + pad), dtype=np.float32)
    return a, b


def _reference(a, b, ta, tb, m, n, k, alpha, beta, c):
    op_a = (a[:k, :m].T if ta else a[:m, :k]).astype(np.float64)
    op_b = (b[:n, :k].T if tb else b[:k, :n]).astype(np.float64)
    return alpha * (op_a @ op_b) + beta * c[:m, :n].astype(np.float64)


def _run(function, a, b, c, ta, tb, m, n, k, alpha, beta, *blocks):
    function(ta, tb, m, n, k, alpha, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
             beta, c.ctypes.data, c.shape[1], *blocks)


SHAPES = [(1, 1, 1), (5, 7, 3), (12, 32, 16), (13, 33, 17), (11, 16, 40), (24, 48, 1),
          (37, 130, 300), (10, 128, 33), (300, 10, 128), (25, 95, 801),
          (53, 16, 801), (48, 1, 7)]  # narrow tiles (n ≤ 16), with 12-row tiles after


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("ta,tb", list(itertools.product((False, True), repeat=2)))
def test_matches_float64_numpy(m, n, k, ta, tb):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b = _operands(rng, m, n, k, ta, tb, pad=3)
    for alpha, beta in ((1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)):
        c = rng.standard_normal((m, n + 2), dtype=np.float32)
        expected = _reference(a, b, ta, tb, m, n, k, alpha, beta, c)
        untouched = c[:, n:].copy()
        _run(gemm.sgemm, a, b, c, ta, tb, m, n, k, alpha, beta)
        scale = np.abs(expected).max()
        assert np.abs(c[:, :n] - expected).max() <= 1e-5 * scale, (alpha, beta)
        assert np.array_equal(c[:, n:], untouched)  # nothing past the n columns written


def test_beta_zero_never_reads_c():
    rng = np.random.default_rng(0)
    a, b = _operands(rng, 30, 40, 50, False, True)
    c = np.full((30, 40), np.nan, np.float32)
    _run(gemm.sgemm, a, b, c, False, True, 30, 40, 50, 1.0, 0.0)
    assert np.isfinite(c).all()
    assert np.allclose(c, a @ b.T, rtol=1e-5, atol=1e-4)


def test_empty_inner_dimension_scales_c():
    c = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = 0.5 * c
    _run(gemm.sgemm, np.zeros((3, 1), np.float32), np.zeros((1, 4), np.float32), c,
         False, False, 3, 4, 0, 1.0, 0.5)
    assert np.array_equal(c, expected)


@pytest.mark.parametrize("pack_from", (0, 1 << 62))  # B's panels packed / read in place
@pytest.mark.parametrize("ta,tb", list(itertools.product((False, True), repeat=2)))
def test_small_blocks_cover_every_loop(ta, tb, pack_from):
    """Blocks of 16 deep and 32 wide run the inner-dimension and column-block loops many
    times at a size the suite can afford (unequal last blocks included), with a weight
    gradient's panels of B packed and read where they lie, whichever this CPU's L1 picks
    (`gemm.PACKS_B`)."""
    m, n, k = 29, 100, 70
    rng = np.random.default_rng(7)
    a, b = _operands(rng, m, n, k, ta, tb)
    c = rng.standard_normal((m, n), dtype=np.float32)
    expected = _reference(a, b, ta, tb, m, n, k, 1.5, 0.5, c)
    _run(gemm.blocked_sgemm, a, b, c, ta, tb, m, n, k, 1.5, 0.5, 16, 32, pack_from)
    assert np.abs(c - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("tb", (False, True))
def test_transposed_a_packed_in_several_blocks(tb):
    """A transposed A of more rows than `gemm.A_BLOCK` holds at the inner dimension's depth
    is packed a block of rows at a time; every block meets every panel of B (packed for
    the first block's `gemm.PACK_B_PANELS` or more panels of A, read in place for the
    last block's 3)."""
    m, n, k = 540, 40, 512
    depth = (k + (k + gemm.KC_PACKED - 1) // gemm.KC_PACKED - 1) // (
        (k + gemm.KC_PACKED - 1) // gemm.KC_PACKED)
    first = gemm.A_BLOCK // (depth * 4 * gemm.MR)  # the test's premise: two blocks,
    assert first >= gemm.PACK_B_PANELS and 0 < m - first * gemm.MR < gemm.PACK_B_PANELS * gemm.MR
    rng = np.random.default_rng(11)
    a, b = _operands(rng, m, n, k, True, tb)
    c = rng.standard_normal((m, n), dtype=np.float32)
    expected = _reference(a, b, True, tb, m, n, k, 1.0, 1.0, c)
    _run(gemm.blocked_sgemm, a, b, c, True, tb, m, n, k, 1.0, 1.0, gemm.KC_PACKED,
         gemm.NC_ROWS, gemm.PACK_B_PANELS)  # as a CPU whose L1 holds packed panels runs it
    assert np.abs(c - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("n", [70, 10])  # 10: narrow tiles, rows split across both kinds
@pytest.mark.parametrize("ta,tb", [(False, True), (True, False), (False, False)])
def test_row_and_column_blocks_give_the_same_bits(ta, tb, n):
    """A parallel step splits a product into blocks of C's rows or columns, each its own
    call: every entry is the same sum in the same order, so the bits are the whole call's
    (a weight gradient's 9 panels of A meet packed panels of B, 4 or 5 meet B in place)."""
    m, k = (108 if ta else 50), 300
    rng = np.random.default_rng(3)
    a, b = _operands(rng, m, n, k, ta, tb)
    whole = np.zeros((m, n), np.float32)
    _run(gemm.sgemm, a, b, whole, ta, tb, m, n, k, 1.0, 0.0)
    item = 4
    for cut in (7, 25, 48) if m == 50 else (7, 48, 60):  # rows
        parts = np.zeros((m, n), np.float32)
        for r0, r1 in ((0, cut), (cut, m)):
            a_at = a.ctypes.data + (r0 if ta else r0 * a.shape[1]) * item
            gemm.sgemm(ta, tb, r1 - r0, n, k, 1.0, a_at, a.shape[1], b.ctypes.data,
                       b.shape[1], 0.0, parts.ctypes.data + r0 * n * item, n)
        assert np.array_equal(parts, whole), cut
    for cut in (5, 32, 45) if n > 45 else (3, 7):  # columns
        parts = np.zeros((m, n), np.float32)
        for c0, c1 in ((0, cut), (cut, n)):
            b_at = b.ctypes.data + (c0 * b.shape[1] if tb else c0) * item
            gemm.sgemm(ta, tb, m, c1 - c0, k, 1.0, a.ctypes.data, a.shape[1], b_at,
                       b.shape[1], 0.0, parts.ctypes.data + c0 * item, n)
        assert np.array_equal(parts, whole), cut


@pytest.mark.parametrize("m,n,k", [(4, 8, 16), (128, 784, 32)])  # below / above OWN_MIN
def test_cblas_entry_point_agrees_on_both_sides_of_own_min(m, n, k):
    """The kernels' entry point, called by symbol name as a kernel calls it."""
    from numba import njit

    entry, _ = blas.load_gemm("s", own=True)

    @njit
    def call(a, b, c, m, n, k):
        entry(101, 112, 111, m, n, k, np.float32(-0.1), a.ctypes.data, a.shape[1],
              b.ctypes.data, b.shape[1], np.float32(1.0), c.ctypes.data, n)

    rng = np.random.default_rng(1)
    a, b = _operands(rng, m, n, k, True, False)
    c = rng.standard_normal((m, n), dtype=np.float32)
    expected = _reference(a, b, True, False, m, n, k, -0.1, 1.0, c)
    call(a, b, c, m, n, k)
    assert (m * n * k >= gemm.OWN_MIN) == (k == 32)
    assert np.abs(c - expected).max() <= 1e-5 * np.abs(expected).max()


def test_l1_size_is_read_from_sysfs(tmp_path):
    """The L1 data cache is read from the level-1 data (or unified) entry; unreadable or
    missing entries give the default."""
    root = tmp_path / "cache"
    for index, (level, kind, size) in enumerate((("1", "Instruction", "64K"),
                                                  ("1", "Data", "48K"), ("2", "Unified", "2M"))):
        folder = root / f"index{index}"
        folder.mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(text + "\n")
    assert gemm._l1_data_bytes(str(root)) == 48 * 1024
    (root / "index1" / "size").write_text("lots\n")
    assert gemm._l1_data_bytes(str(root), default=1234) == 1234
    assert gemm._l1_data_bytes(str(tmp_path / "absent"), default=4321) == 4321


def test_choice_follows_the_environment(monkeypatch):
    monkeypatch.setenv(blas.GEMM_ENV, "openblas")
    assert blas.gemm_choice() == "openblas"
    monkeypatch.setenv(blas.GEMM_ENV, "symnet")
    assert blas.gemm_choice() == "symnet"
    monkeypatch.setenv(blas.GEMM_ENV, "mkl")
    with pytest.raises(ValueError, match="SYMNET_GEMM='mkl'"):
        blas.gemm_choice()


def test_float32_steps_use_it_and_train_as_openblas_steps_do(monkeypatch):
    """A float32 step's source names the product; trained with it and without it (the
    environment read when the source is written), five steps agree to float32 rounding."""
    import symnet as sn

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def trained(choice):
        monkeypatch.setenv(blas.GEMM_ENV, choice)
        sn.manual_seed(0)
        model = sn.Sequential(sn.Linear(784, 128), sn.ReLU(), sn.Linear(128, 10))
        step = sn.compile(model, sn.CrossEntropyLoss(), sn.optim.Adam(model.parameters()),
                          parallel=False)
        losses = [float(step(X, y)) for _ in range(5)]
        return step.source(), losses, model[0].weight.data.copy()

    own_source, own_losses, own_w = trained("symnet")
    blas_source, blas_losses, blas_w = trained("openblas")
    assert 'own=True' in own_source and 'own=True' not in blas_source
    assert np.allclose(own_losses, blas_losses, rtol=1e-5)
    assert np.abs(own_w - blas_w).max() < 1e-5
    assert own_losses[-1] < own_losses[0]
