"""symnet's own float32 matrix product for AVX-512 CPUs, in CBLAS's row-major terms:
``C = alpha·op(A)·op(B) + beta·C``.

Why: on this project's machine (`benchmarks/gemm_shapes.py`, one core, caches warm) NumPy's
bundled OpenBLAS runs the train step's large products at 200–240 GFLOP/s, and X·Wᵀ at
batch 32 at 99; this product runs them at 208–254, and at 173 (0.35–1.01× OpenBLAS's
time; X·Wᵀ 0.57–0.90×).  The design is BLIS's:

- A register tile of ``MR × NR`` = 12 × 32 entries of C: 24 AVX-512 accumulators.  Each step
  of the inner product loads 32 entries of a row of op(B) (two vectors) and broadcasts 12
  entries of a column of op(A), for 24 fused multiply-adds.  The tile is written in LLVM's
  vector IR (`_tile`), so the vector code does not depend on what the auto-vectoriser sees.
- op(A) is read where it lies when its rows are rows of A (12 rows streamed, then reused
  from L1 for every tile of a row of tiles); op(B) is read where it lies when its rows are
  rows of B.  Only the other cases are packed into aligned panels: a transposed B (16 × 16
  register transposes, `_transpose16`), a transposed A, and partial panels at the edges,
  zero-padded, so no tile reads past an array.  The inner dimension is split into blocks
  (as deep as 800 when A is read in place, so that each row of A streams once, C's columns
  in blocks so that one block of B stays in L2; when A is packed, each panel of B meets
  every packed panel of A in turn, `_by_panels_of_b`: 256 deep with B's panel packed when
  it meets eight or more, where the two panels fit in L1 together, else 768 deep with B
  read where it lies, `PACKS_B`).  The tile prefetches B's rows `AHEAD` rows before it
  reads them.
- A product of at most 16 columns (an output layer of 10 classes) runs in 24 × 16 tiles
  (`_narrow_tile`): 10 columns use 10 of a row's 16 lanes there, against 10 of 32 in a
  12 × 32 tile (4096×10·128: 79 µs, against 137 in 12 × 32 tiles and 137 in OpenBLAS).
- Edge tiles are written through masks (`_tile`'s ``rows`` and ``cols``): no copy, no
  scratch tile.

The product is compiled for the machine it runs on (``cache=True``: Numba's cache is keyed
by the CPU).  `codegen.blas.gemm_choice` decides whether kernels use it: only where the CPU
has AVX-512, only for float32, and only from `OWN_MIN` multiply-adds (`_cblas_sgemm`).

Example:
    >>> import numpy as np
    >>> from codegen.blas import avx512
    >>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> b = np.ones((3, 4), np.float32)
    >>> c = np.zeros((2, 4), np.float32)
    >>> if avx512():
    ...     sgemm(False, False, 2, 4, 3, 1.0, a.ctypes.data, 3, b.ctypes.data, 4,
    ...           0.0, c.ctypes.data, 4)
    ... else:
    ...     c[:] = a @ b
    >>> c[1].tolist()
    [12.0, 12.0, 12.0, 12.0]
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from llvmlite import binding, ir
from numba import carray, cfunc, njit, types
from numba.extending import intrinsic

from codegen.blas import CBLAS_SYMBOL, gemm_signature, load_gemm

MR, NR, VW = 12, 32, 16  # register tile rows, columns; floats per AVX-512 vector
MR_NARROW = 24  # rows of the tile for products of at most VW columns (24 accumulators)
NV = NR // VW  # vectors per tile row
# Blocks of the inner dimension and of C's columns, chosen with the caches flushed before
# each product (as the rest of a train step flushes them).  op(A) read in rows of A: one
# block up to 800 deep, so that each row of A streams once (4096×784·784×128 at 256 deep
# ran 1.2× slower), C's columns in blocks of 128.  Packed A (a weight gradient dZᵀ·X): 256
# deep, so that a panel of A and a packed panel of B fit in L1 together (12·256 + 32·256
# floats: 44 KiB of 48), at most A_BLOCK bytes of A packed at once, and B's panels packed
# when they meet at least PACK_B_PANELS panels of A.  B read where it lies (rows a stride
# apart, a page or more each) wanted 768-deep blocks instead; packed at 256 deep, 128×784
# from 4096 took 0.94–1.01× that time, 256×256 0.87–0.94×, 512×512 and 512×784 from 256
# 0.88–0.92×, and 96×128 0.94–1.09× (one core, caches warm and flushed, several runs);
# with 1, 2 or 4 panels of A to meet, packing lost (1.05–1.9×), and 256-deep blocks in
# place took 0.89–1.11× (48×784 from 4096: 0.98–1.11×).  The depth depends on k alone, so
# that a product split by rows sums as the whole does (`benchmarks/gemm_blocks.py`).
KC_ROWS, NC_ROWS = 800, 128
KC_PACKED = 256
PACK_B_PANELS = 8
A_BLOCK = 512 * 1024
KC_IN_PLACE = 768
# Where B is read in place, the last NEXT_TILES tiles of a panel prefetch the next panel's
# rows, from its first (Zen 4, one core, interleaved runs: 128×784 from 4096 0.91–0.94×
# the time, 96×784 0.82–0.91×, 128×784 and 512×784 from 256 unchanged; with 1, 3 or 5
# tiles no better, and starting 64 rows on lost).
NEXT_TILES = 2
AHEAD = 64  # rows of B prefetched ahead of the tile's inner loop (128×784 from 4096: 0.93×)
ALIGN = 64  # bytes: packed panels start on a cache line


def _l1_data_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache",
                   default: int = 32 * 1024) -> int:
    """The first core's L1 data cache in bytes, from Linux's sysfs (``default`` where
    ``root`` holds no readable level-1 data or unified entry).

    Example:
        >>> _l1_data_bytes() >= 1024
        True
    """
    for index in sorted(Path(root).glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip()
                                 for name in ("level", "type", "size"))
        except OSError:
            continue
        scale = {"K": 1024, "M": 1024 * 1024}.get(size[-1:], 0)
        if level == "1" and kind in ("Data", "Unified") and scale and size[:-1].isdigit():
            return int(size[:-1]) * scale
    return default


# A weight gradient packs B's panels (256 deep, where they meet PACK_B_PANELS panels of
# A) only where a packed panel and a panel of A, (MR + NR)·KC_PACKED floats (44 KiB), fit
# in L1 together, as in a 48 KiB L1 (an Intel Xeon host: the figures above).  In a 32 KiB
# L1 (a Zen 4 host) B is read where it lies, KC_IN_PLACE deep: there, against 256-deep
# packed panels, 128×784 from 4096 took 0.94×, 48×784 and 96×784 from 4096 0.81–0.90×,
# 512×512 and 128×784 from 256 (256 deep either way) 0.95–1.02× (caches warm and flushed,
# `benchmarks/gemm_blocks.py`).  Numba's cache is keyed by the CPU: a cached product was
# compiled with the choice of the CPU it runs on.
L1_BYTES = _l1_data_bytes()
PACKS_B = (MR + NR) * KC_PACKED * 4 <= L1_BYTES
KC_TRANSPOSED_A = KC_PACKED if PACKS_B else KC_IN_PLACE
PACK_FROM = PACK_B_PANELS if PACKS_B else 1 << 62  # panels of A a packed panel of B meets

_F32 = ir.FloatType()
_I1, _I32, _I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(_F32, VW)
_MASK = ir.VectorType(_I1, VW)
_LANES = ir.VectorType(_I64, VW)


# Multiply-adds from which kernels use this product: below, OpenBLAS's fixed costs are
# smaller (`benchmarks/gemm_shapes.py`: 32×10·10×128 took 0.6 µs here, 0.4 in OpenBLAS).
OWN_MIN = 1 << 19


# ---------------------------------------------------------------------------------------
# LLVM IR helpers (used inside the intrinsics' code generators)

def _function(module, name: str, ret, args):
    found = module.globals.get(name)
    return found if found is not None else ir.Function(module, ir.FunctionType(ret, args), name)


def _fma(builder):
    return _function(builder.module, "llvm.fma.v16f32", _VEC, [_VEC, _VEC, _VEC])


def _masked_load(builder, pointer, mask):
    load = _function(builder.module, "llvm.masked.load.v16f32.p0", _VEC,
                     [_VEC.as_pointer(), _I32, _MASK, _VEC])
    return builder.call(load, [builder.bitcast(pointer, _VEC.as_pointer()), ir.Constant(_I32, 4),
                               mask, ir.Constant(_VEC, [0.0] * VW)])


def _masked_store(builder, value, pointer, mask):
    store = _function(builder.module, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                      [_VEC, _VEC.as_pointer(), _I32, _MASK])
    builder.call(store, [value, builder.bitcast(pointer, _VEC.as_pointer()),
                         ir.Constant(_I32, 4), mask])


def _prefetch(builder, pointer):
    """Prefetch ``pointer``'s line into L1 for reading (a hint: it never faults)."""
    bytes_ = ir.IntType(8).as_pointer()
    prefetch = _function(builder.module, "llvm.prefetch.p0i8", ir.VoidType(),
                         [bytes_, _I32, _I32, _I32])
    builder.call(prefetch, [builder.bitcast(pointer, bytes_), ir.Constant(_I32, 0),
                            ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _splat(builder, scalar, vector_type=_VEC):
    undefined = ir.Constant(vector_type, ir.Undefined)
    one = builder.insert_element(undefined, scalar, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, VW), [0] * VW)
    return builder.shuffle_vector(one, undefined, zeros)


def _lanes_below(builder, count):
    """The mask of lanes ``0 … count-1`` (``count`` an i64; ≤ 0 gives none)."""
    lanes = ir.Constant(_LANES, list(range(VW)))
    return builder.icmp_signed("<", lanes, _splat(builder, count, _LANES))


def _at_most(builder, value, bound):
    """``min(value, bound)`` of two i64s."""
    return builder.select(builder.icmp_signed("<", value, bound), value, bound)


def _at(builder, pointer, offset):
    return builder.gep(pointer, [offset])


def _vector_at(builder, pointer, offset):
    return builder.bitcast(_at(builder, pointer, offset), _VEC.as_pointer())


def _line_offsets(nv: int) -> tuple[int, ...]:
    """Offsets into a row of ``nv`` vectors that touch each of its cache lines, aligned or
    not: the start of each vector and the last entry."""
    return (*range(0, nv * VW, VW), nv * VW - 1)


def _i64(value: int):
    return ir.Constant(_I64, value)


# ---------------------------------------------------------------------------------------
# The intrinsics


@intrinsic
def _tile(typingctx, kc, a, rsa, csa, b, ldb, c, ldc, alpha, beta, rows, cols, ahead_b,
          ahead):
    """``C[i, j] = alpha·Σ_k A[i·rsa + k·csa]·B[k·ldb + j] + beta·C[i, j]`` for the 12 × 32
    tile at ``c`` (row stride ``ldc``), written only where ``i < rows`` and ``j < cols``;
    ``beta == 0`` never reads C.  Every entry of A and B the full tile reads must be
    readable.  At step k the tile prefetches the row ``min(k + ahead, kc - 1)`` of the
    32 columns at ``ahead_b`` (rows ``ldb`` apart): B's own rows ahead of it, or the rows
    of the panel the next tile reads."""
    sig = types.void(kc, a, rsa, csa, b, ldb, c, ldc, alpha, beta, rows, cols, ahead_b, ahead)
    return sig, functools.partial(_tile_code, MR, NV, False)


@intrinsic
def _narrow_tile(typingctx, kc, a, rsa, csa, b, ldb, c, ldc, alpha, beta, rows, cols):
    """`_tile` for a `MR_NARROW` × 16 tile, for a product of at most 16 columns (a 10-class
    output layer's ``A·Wᵀ``: 10 of 16 lanes used, not 10 of 32).  B must be a packed
    panel (it stays in L1); A's rows are prefetched instead."""
    sig = types.void(kc, a, rsa, csa, b, ldb, c, ldc, alpha, beta, rows, cols)
    return sig, functools.partial(_tile_code, MR_NARROW, 1, True)


def _tile_code(mr, nv, narrow, context, builder, signature, args):
    """The tile of ``mr`` rows × ``nv`` vectors: ``mr·nv`` accumulators; ``narrow``: B is
    a packed panel that stays in L1, and A's rows (read where they lie) are prefetched."""
    kc_, a_, rsa_, csa_, b_, ldb_, c_, ldc_, alpha_, beta_, rows_, cols_ = args[:12]
    ahead_b_, ahead_ = args[12:] if len(args) > 12 else (b_, _i64(AHEAD))
    fma = _fma(builder)
    zero = ir.Constant(_VEC, [0.0] * VW)
    # C's tile, which the stores will read unless beta is 0, into L1 while the loop runs
    # (rows and columns past the tile's edge are its last ones: nothing past C is touched)
    with builder.if_then(builder.fcmp_unordered("!=", beta_, ir.Constant(_F32, 0.0))):
        offsets = [_at_most(builder, _i64(offset), builder.sub(cols_, _i64(1)))
                   for offset in _line_offsets(nv)]
        for i in range(mr):
            row = builder.mul(_at_most(builder, _i64(i), builder.sub(rows_, _i64(1))), ldc_)
            for offset in offsets:
                _prefetch(builder, _at(builder, c_, builder.add(row, offset)))
    entry = builder.block
    loop = builder.append_basic_block("tile.loop")
    done = builder.append_basic_block("tile.done")
    builder.cbranch(builder.icmp_signed(">", kc_, _i64(0)), loop, done)

    builder.position_at_end(loop)
    k = builder.phi(_I64)
    k.add_incoming(_i64(0), entry)
    accumulators = []
    for _ in range(mr * nv):
        phi = builder.phi(_VEC)
        phi.add_incoming(zero, entry)
        accumulators.append(phi)
    ahead = _at_most(builder, builder.add(k, ahead_), builder.sub(kc_, _i64(1)))
    if narrow:
        # Two of A's rows, in turn, AHEAD entries on: each row every mr/2 ≤ 16 entries, so
        # every line.  The rows of A stream once (one panel of B), too many at once for the
        # hardware prefetchers (4096×10·512: 351 µs, 597 without, 563 in 12-row tiles).
        first = builder.urem(builder.mul(k, _i64(2)), _i64(mr))
        for row in (first, builder.add(first, _i64(1))):
            _prefetch(builder, _at(builder, a_, builder.add(builder.mul(row, rsa_),
                                                            builder.mul(ahead, csa_))))
    else:
        # A row of B ``ahead`` rows on (the last row near the end) into L1: rows of B read
        # where they lie are a stride apart, which the hardware prefetchers do not run far
        # enough ahead on.
        ahead_row = builder.mul(ahead, ldb_)
        for offset in _line_offsets(nv):
            _prefetch(builder, _at(builder, ahead_b_, builder.add(ahead_row, _i64(offset))))
    b_row = builder.mul(k, ldb_)
    b_vectors = [builder.load(_vector_at(builder, b_, builder.add(b_row, _i64(h * VW))),
                              align=4) for h in range(nv)]
    a_column = builder.mul(k, csa_)
    updated = []
    for i in range(mr):
        pointer = _at(builder, a_, builder.add(builder.mul(_i64(i), rsa_), a_column))
        a_entry = _splat(builder, builder.load(pointer, align=4))
        for h in range(nv):
            updated.append(builder.call(fma, [a_entry, b_vectors[h], accumulators[i * nv + h]]))
    k_next = builder.add(k, _i64(1))
    k.add_incoming(k_next, loop)
    for phi, value in zip(accumulators, updated):
        phi.add_incoming(value, loop)
    builder.cbranch(builder.icmp_signed("<", k_next, kc_), loop, done)

    builder.position_at_end(done)
    sums = []
    for i in range(mr * nv):
        phi = builder.phi(_VEC)
        phi.add_incoming(zero, entry)
        phi.add_incoming(updated[i], loop)
        sums.append(phi)
    alphas, betas = _splat(builder, alpha_), _splat(builder, beta_)
    masks = [_lanes_below(builder, builder.sub(cols_, _i64(h * VW))) for h in range(nv)]
    no_beta = builder.fcmp_ordered("==", beta_, ir.Constant(_F32, 0.0))
    with builder.if_else(no_beta) as (overwrite, accumulate):
        for reads_c in (False, True):  # beta == 0 never reads C: its lines may be cold
            with accumulate if reads_c else overwrite:
                for i in range(mr):
                    # A row past ``rows`` is skipped, not masked off: masked stores whose
                    # lanes are all off, at addresses past the array, made whole steps 3×
                    # slower (batch 32, some allocations only).
                    with builder.if_then(builder.icmp_signed("<", _i64(i), rows_)):
                        row = builder.mul(_i64(i), ldc_)
                        for h in range(nv):  # so is a vector past ``cols``
                            with builder.if_then(builder.icmp_signed(">", cols_, _i64(h * VW))):
                                pointer = _at(builder, c_, builder.add(row, _i64(h * VW)))
                                value = builder.fmul(alphas, sums[i * nv + h])
                                if reads_c:
                                    old = _masked_load(builder, pointer, masks[h])
                                    value = builder.call(fma, [betas, old, value])
                                _masked_store(builder, value, pointer, masks[h])
    return context.get_dummy_value()


@intrinsic
def _transpose16(typingctx, src, lds, dst, ldd):
    """``dst[c·ldd + r] = src[r·lds + c]`` for a 16 × 16 block: 16 loads, four rounds of
    shuffles (round d swaps bit d of the row and column indices), 16 stores."""
    sig = types.void(src, lds, dst, ldd)

    def codegen(context, builder, signature, args):
        src_, lds_, dst_, ldd_ = args
        rows = [builder.load(_vector_at(builder, src_, builder.mul(_i64(r), lds_)), align=4)
                for r in range(VW)]
        d = 1
        while d < VW:
            new = list(rows)
            for r in range(VW):
                if r & d:
                    continue
                low = [16 + (c ^ d) if c & d else c for c in range(VW)]
                high = [16 + c if c & d else c ^ d for c in range(VW)]
                new[r] = builder.shuffle_vector(rows[r], rows[r | d],
                                                ir.Constant(ir.VectorType(_I32, VW), low))
                new[r | d] = builder.shuffle_vector(rows[r], rows[r | d],
                                                    ir.Constant(ir.VectorType(_I32, VW), high))
            rows, d = new, d * 2
        for r in range(VW):
            builder.store(rows[r], _vector_at(builder, dst_, builder.mul(_i64(r), ldd_)), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _copy16(typingctx, src, dst, loaded, stored):
    """``dst[0:stored] = src[0:loaded]``, zeros after ``loaded`` (both ≤ 16).  With
    ``loaded ≤ 0`` nothing is read (no all-off masked load at an address past an array)."""
    sig = types.void(src, dst, loaded, stored)

    def codegen(context, builder, signature, args):
        src_, dst_, loaded_, stored_ = args
        stores = _lanes_below(builder, stored_)
        with builder.if_else(builder.icmp_signed(">", loaded_, _i64(0))) as (some, none):
            with some:
                value = _masked_load(builder, src_, _lanes_below(builder, loaded_))
                _masked_store(builder, value, dst_, stores)
            with none:
                _masked_store(builder, ir.Constant(_VEC, [0.0] * VW), dst_, stores)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _pointer(typingctx, address):
    """A ``float*`` from an address."""
    sig = types.CPointer(types.float32)(address)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.PointerType(_F32))

    return sig, codegen


# ---------------------------------------------------------------------------------------
# Packing and the product


@njit(cache=True, inline="always")
def _aligned(buffer):
    address = np.int64(buffer.ctypes.data)
    return address + (ALIGN - address % ALIGN) % ALIGN


@njit(cache=True)
def _pack_b(tb, b, ldb, pc, kc, j0, w, panel):
    """Columns ``j0 … j0+w-1`` of op(B)'s rows ``pc … pc+kc-1`` into one zero-padded
    ``kc × NR`` panel at address ``panel``."""
    if tb:  # op(B)[k, j] = B[j, k]: transpose 16 × 16 blocks, the rest entry by entry
        full_k = kc - kc % VW
        for h in range(NV):
            j = j0 + h * VW
            dst = panel + h * VW * 4
            if w >= (h + 1) * VW:
                for k in range(0, full_k, VW):
                    _transpose16(_pointer(b + (j * ldb + pc + k) * 4), ldb,
                                 _pointer(dst + k * NR * 4), NR)
                start = full_k
            else:
                start = 0
            out = carray(_pointer(panel), (kc, NR))
            rows = carray(_pointer(b), (j0 + w, ldb))
            for k in range(start, kc):
                for jj in range(VW):
                    col = h * VW + jj
                    out[k, col] = rows[j0 + col, pc + k] if col < w else 0.0
    else:  # rows of B: copy with zero padding
        for k in range(kc):
            src = b + ((pc + k) * ldb + j0) * 4
            dst = panel + k * NR * 4
            for h in range(NV):
                _copy16(_pointer(src + h * VW * 4), _pointer(dst + h * VW * 4),
                        min(VW, max(0, w - h * VW)), VW)


@njit(cache=True)
def _pack_a(ta, a, lda, pc, kc, i0, rows, panel):
    """Rows ``i0 … i0+rows-1`` of op(A)'s columns ``pc … pc+kc-1`` into one zero-padded
    ``kc × MR`` panel at address ``panel`` (entry ``[k, i]`` at ``k·MR + i``)."""
    if ta:  # op(A)[i, k] = A[k, i]: each k is 12 contiguous entries of A's row
        for k in range(kc):
            _copy16(_pointer(a + ((pc + k) * lda + i0) * 4), _pointer(panel + k * MR * 4),
                    rows, MR)
    else:
        out = carray(_pointer(panel), (kc, MR))
        src = carray(_pointer(a), (i0 + rows, lda))
        for k in range(kc):
            for i in range(MR):
                out[k, i] = src[i0 + i, pc + k] if i < rows else 0.0


@njit(cache=True)
def sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """``C = alpha·op(A)·op(B) + beta·C`` as CBLAS's row-major ``sgemm``: ``a``, ``b``,
    ``c`` are the addresses of float32 arrays, ``op(X)`` is Xᵀ where ``tx``; C is m × n and
    the inner dimension k."""
    blocked_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                  KC_TRANSPOSED_A if ta else KC_ROWS, NC_ROWS, PACK_FROM)


@njit(cache=True)
def blocked_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, KC, NC,
                  pack_from=PACK_FROM):
    """`sgemm` with the blocks given: the inner dimension in equal blocks of at most ``KC``
    (a function of k alone, so that blocks of C's rows or columns sum in the same order as
    the whole), C's columns in blocks of ``NC`` where op(A) is read in rows of A; where
    op(A) = Aᵀ, B's panels packed when they meet ``pack_from`` or more panels of A
    (`benchmarks/gemm_blocks.py` times the choices)."""
    alpha, beta = np.float32(alpha), np.float32(beta)
    a, b, c = np.int64(a), np.int64(b), np.int64(c)  # uintp + int64 would be float64
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        view = carray(_pointer(c), (m, ldc))
        for i in range(m):
            for j in range(n):
                view[i, j] = 0.0 if beta == 0 else beta * view[i, j]
        return
    depth = (k + (k + KC - 1) // KC - 1) // ((k + KC - 1) // KC)  # equal blocks of ≤ KC
    if ta:
        _by_panels_of_b(tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, depth, pack_from)
    else:
        _by_rows_of_a(tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, depth, NC)


@njit(cache=True)
def _by_rows_of_a(tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, depth, NC):
    """op(A) = A: 12 rows of A at a time stay in L1 while they meet every panel of a block
    of ``NC`` columns of op(B) (packed where B is transposed or a panel is partial).  A
    product of at most 16 columns takes `MR_NARROW` rows at a time (`_narrow_tile`), the
    rows left over in 12-row tiles."""
    narrow = (m // MR_NARROW) * MR_NARROW if n <= VW else 0  # rows in narrow tiles
    left = m - narrow
    b_panels = (min(NC, n) + NR - 1) // NR if tb else (1 if n % NR else 0)
    b_space = np.empty(b_panels * NR * depth + ALIGN // 4, np.float32)
    a_space = np.empty((MR * depth if left % MR else 0) + ALIGN // 4, np.float32)
    b_packed = _aligned(b_space)
    a_packed = _aligned(a_space)
    panels_a = (left + MR - 1) // MR
    for pc in range(0, k, depth):
        kc = min(depth, k - pc)
        accumulate = beta if pc == 0 else np.float32(1.0)
        if left % MR:
            i0 = narrow + (panels_a - 1) * MR
            _pack_a(False, a, lda, pc, kc, i0, m - i0, a_packed)
        for jc in range(0, n, NC):
            panels_b = (min(NC, n - jc) + NR - 1) // NR
            for q in range(panels_b):
                j0 = jc + q * NR
                w = min(NR, n - j0)
                if tb:
                    _pack_b(True, b, ldb, pc, kc, j0, w, b_packed + q * kc * NR * 4)
                elif w < NR:
                    _pack_b(False, b, ldb, pc, kc, j0, w, b_packed)
            for i0 in range(0, narrow, MR_NARROW):  # n ≤ 16: one packed panel of B
                _narrow_tile(kc, _pointer(a + (i0 * lda + pc) * 4), lda, 1, _pointer(b_packed),
                             NR, _pointer(c + i0 * ldc * 4), ldc, alpha, accumulate,
                             MR_NARROW, n)
            for p in range(panels_a):
                i0 = narrow + p * MR
                rows = min(MR, m - i0)
                if rows < MR:
                    a_tile, rsa, csa = a_packed, 1, MR
                else:
                    a_tile, rsa, csa = a + (i0 * lda + pc) * 4, lda, 1
                for q in range(panels_b):
                    j0 = jc + q * NR
                    w = min(NR, n - j0)
                    if tb:
                        b_tile, b_ld = b_packed + q * kc * NR * 4, NR
                    elif w < NR:
                        b_tile, b_ld = b_packed, NR
                    else:
                        b_tile, b_ld = b + (pc * ldb + j0) * 4, ldb
                    _tile(kc, _pointer(a_tile), rsa, csa, _pointer(b_tile), b_ld,
                          _pointer(c + (i0 * ldc + j0) * 4), ldc, alpha, accumulate, rows, w,
                          _pointer(b_tile), AHEAD)


@njit(cache=True)
def _by_panels_of_b(tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, depth, pack_from):
    """op(A) = Aᵀ (a weight gradient dZᵀ·X): the panels of up to `A_BLOCK` bytes of A are
    packed once per block of the inner dimension; then each panel of op(B), packed once
    where it meets ``pack_from`` or more of them (else read where it lies), meets every
    one of them, the tile prefetching its next rows.  With the panels of A meeting a panel
    of B rather than the converse, the large operand (X) streams from memory once per
    block instead of stalling every tile."""
    mc = min(max(1, A_BLOCK // (depth * 4 * MR)), (m + MR - 1) // MR) * MR
    a_space = np.empty(mc * depth + ALIGN // 4, np.float32)
    b_space = np.empty(NR * depth + ALIGN // 4, np.float32)
    a_packed = _aligned(a_space)
    b_packed = _aligned(b_space)
    for pc in range(0, k, depth):
        kc = min(depth, k - pc)
        accumulate = beta if pc == 0 else np.float32(1.0)
        for ic in range(0, m, mc):
            panels_a = (min(mc, m - ic) + MR - 1) // MR
            for p in range(panels_a):
                i0 = ic + p * MR
                _pack_a(True, a, lda, pc, kc, i0, min(MR, m - i0), a_packed + p * kc * MR * 4)
            for j0 in range(0, n, NR):
                w = min(NR, n - j0)
                in_place = not (tb or w < NR or panels_a >= pack_from)
                if in_place:
                    b_tile, b_ld = b + (pc * ldb + j0) * 4, ldb
                else:
                    _pack_b(tb, b, ldb, pc, kc, j0, w, b_packed)
                    b_tile, b_ld = b_packed, NR
                # B read in place: the last NEXT_TILES tiles prefetch the next panel's rows
                # while they read their own from cache, so the first tile of that panel
                # does not wait on memory.
                nxt = j0 + NR
                ahead_next = in_place and panels_a > NEXT_TILES and nxt + NR <= n
                for p in range(panels_a):
                    i0 = ic + p * MR
                    ahead_b, ahead = b_tile, AHEAD
                    if ahead_next and p >= panels_a - NEXT_TILES:
                        ahead_b, ahead = b + (pc * ldb + nxt) * 4, 0
                    _tile(kc, _pointer(a_packed + p * kc * MR * 4), 1, MR, _pointer(b_tile),
                          b_ld, _pointer(c + (i0 * ldc + j0) * 4), ldc, alpha, accumulate,
                          min(MR, m - i0), w, _pointer(ahead_b), ahead)


@intrinsic
def _address(typingctx, pointer):
    """A ``void*``'s address as an integer."""
    sig = types.int64(pointer)

    def codegen(context, builder, signature, args):
        return builder.ptrtoint(args[0], _I64)

    return sig, codegen


_openblas_sgemm = load_gemm("s")[0]


@cfunc(gemm_signature(types.float32), cache=True)
def _cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """CBLAS's ``sgemm`` (row-major ``order`` 101 only): this product from `OWN_MIN`
    multiply-adds, OpenBLAS's below, where its fixed costs are smaller."""
    if m * n * k >= OWN_MIN:
        sgemm(transa == 112, transb == 112, m, n, k, alpha, _address(a), lda, _address(b), ldb,
              beta, _address(c), ldc)
    else:
        _openblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


# Kernels call the entry point by this name (`codegen.blas.load_gemm`'s ``own``), as they
# call OpenBLAS's: its machine code is compiled once (and cached), not again inside every
# kernel that calls it, and a cached kernel finds it by name in a new process.
binding.add_symbol(CBLAS_SYMBOL, _cblas_sgemm.address)
