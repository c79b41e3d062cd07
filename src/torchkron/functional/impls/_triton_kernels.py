"""Triton kernels behind :mod:`torchkron.functional.impls.triton` (imported only from
there, lazily).

Kept apart because this module imports ``triton`` at its top: Triton resolves the
helpers a kernel calls (``chain_tile``, ``wgrad_tile``) through the module's globals.
Shapes and layouts are described in :mod:`torchkron.functional.impls.triton`.
"""

# mypy: ignore-errors
# Triton kernels are untyped: their arguments are pointers and runtime scalars.

import triton
import triton.language as tl


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    # acc += a @ b. DOT_F32 (set only under TRITON_INTERPRET=1 for bfloat16) upcasts the
    # operands first: the interpreter's bfloat16 dot returns garbage (triton 3.9), while
    # loads, stores and casts are right, so the kernels' logic is still what is tested.
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee",
                      out_dtype=acc.dtype)  # fmt: skip
    else:
        return tl.dot(a, b, acc, input_precision=PREC, out_dtype=acc.dtype)


@triton.jit
def chain_tile(
    b,
    pid_p,
    pid_q,
    x_ptr,
    sxb,
    sxt,
    sxs,
    a_ptr,
    sar,
    sap,
    sat,
    c_ptr,
    scr,
    scs,
    scq,
    y_ptr,
    syb,
    syp,
    syq,
    bias_ptr,
    sbp,
    sbq,
    R,
    P,
    T,
    S,
    Q,
    HAS_BIAS: tl.constexpr,
    BP: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BQ: tl.constexpr,
    PREC: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    # One (BP, BQ) tile of Y_b = sum_r A_r @ (X_b @ C_r): A_r (P, T), X_b (T, S),
    # C_r (S, Q). The (BT, BQ) intermediate never leaves registers.
    dt = x_ptr.dtype.element_ty
    acc_dt = tl.float64 if dt == tl.float64 else tl.float32
    rp = pid_p * BP + tl.arange(0, BP)
    rq = pid_q * BQ + tl.arange(0, BQ)
    x_b = x_ptr + b.to(tl.int64) * sxb
    acc = tl.zeros((BP, BQ), dtype=acc_dt)
    for r in range(R):
        for t0 in range(0, T, BT):
            rt = t0 + tl.arange(0, BT)
            inter = tl.zeros((BT, BQ), dtype=acc_dt)
            for s0 in range(0, S, BS):
                rs = s0 + tl.arange(0, BS)
                xt = tl.load(
                    x_b + rt[:, None] * sxt + rs[None, :] * sxs,
                    mask=(rt[:, None] < T) & (rs[None, :] < S),
                    other=0.0,
                )
                ct = tl.load(
                    c_ptr + r * scr + rs[:, None] * scs + rq[None, :] * scq,
                    mask=(rs[:, None] < S) & (rq[None, :] < Q),
                    other=0.0,
                )
                inter = mma(xt, ct, inter, PREC, DOT_F32)
            at = tl.load(
                a_ptr + r * sar + rp[:, None] * sap + rt[None, :] * sat,
                mask=(rp[:, None] < P) & (rt[None, :] < T),
                other=0.0,
            )
            # Rounded to the input dtype, as the unfused path stores it.
            acc = mma(at, inter.to(dt), acc, PREC, DOT_F32)
    if HAS_BIAS:
        bt = tl.load(
            bias_ptr + rp[:, None] * sbp + rq[None, :] * sbq,
            mask=(rp[:, None] < P) & (rq[None, :] < Q),
            other=0.0,
        )
        acc += bt.to(acc_dt)
    tl.store(
        y_ptr + b.to(tl.int64) * syb + rp[:, None] * syp + rq[None, :] * syq,
        acc.to(y_ptr.dtype.element_ty),
        mask=(rp[:, None] < P) & (rq[None, :] < Q),
    )


@triton.jit
def wgrad_tile(
    b_lo,
    b_hi,
    r,
    pid_p,
    pid_q,
    l_ptr,
    slb,
    slp,
    sls,
    m_ptr,
    smr,
    sms,
    smt,
    n_ptr,
    snb,
    snt,
    snq,
    w_ptr,
    swp,
    swq,
    P,
    S,
    T,
    Q,
    BP: tl.constexpr,
    BS: tl.constexpr,
    BT: tl.constexpr,
    BQ: tl.constexpr,
    PREC: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    # One (BP, BQ) tile of sum_{b_lo <= b < b_hi} (L_b @ M_r) @ N_b: L_b (P, S),
    # M_r (S, T), N_b (T, Q); written unreduced (float32/64) to the workspace.
    dt = l_ptr.dtype.element_ty
    acc_dt = tl.float64 if dt == tl.float64 else tl.float32
    rp = pid_p * BP + tl.arange(0, BP)
    rq = pid_q * BQ + tl.arange(0, BQ)
    acc = tl.zeros((BP, BQ), dtype=acc_dt)
    for b in range(b_lo, b_hi):
        # b is int64 here: its bounds are (see backward_kernel).
        l_b = l_ptr + b * slb
        n_b = n_ptr + b * snb
        for t0 in range(0, T, BT):
            rt = t0 + tl.arange(0, BT)
            inter = tl.zeros((BP, BT), dtype=acc_dt)
            for s0 in range(0, S, BS):
                rs = s0 + tl.arange(0, BS)
                lt = tl.load(
                    l_b + rp[:, None] * slp + rs[None, :] * sls,
                    mask=(rp[:, None] < P) & (rs[None, :] < S),
                    other=0.0,
                )
                mt = tl.load(
                    m_ptr + r * smr + rs[:, None] * sms + rt[None, :] * smt,
                    mask=(rs[:, None] < S) & (rt[None, :] < T),
                    other=0.0,
                )
                inter = mma(lt, mt, inter, PREC, DOT_F32)
            nt = tl.load(
                n_b + rt[:, None] * snt + rq[None, :] * snq,
                mask=(rt[:, None] < T) & (rq[None, :] < Q),
                other=0.0,
            )
            acc = mma(inter.to(dt), nt, acc, PREC, DOT_F32)
    tl.store(
        w_ptr + rp[:, None] * swp + rq[None, :] * swq,
        acc,
        mask=(rp[:, None] < P) & (rq[None, :] < Q),
    )


@triton.jit
def forward_kernel(
    x_ptr,
    sxb,
    sxt,
    sxs,
    a_ptr,
    sar,
    sap,
    sat,
    c_ptr,
    scr,
    scs,
    scq,
    y_ptr,
    syb,
    syp,
    syq,
    bias_ptr,
    sbp,
    sbq,
    R,
    P,
    T,
    S,
    Q,
    TILES_Q,
    TILES_PQ,
    HAS_BIAS: tl.constexpr,
    BP: tl.constexpr,
    BT: tl.constexpr,
    BS: tl.constexpr,
    BQ: tl.constexpr,
    PREC: tl.constexpr,
    DOT_F32: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // TILES_PQ
    tile = pid % TILES_PQ
    chain_tile(
        b, tile // TILES_Q, tile % TILES_Q,
        x_ptr, sxb, sxt, sxs, a_ptr, sar, sap, sat, c_ptr, scr, scs, scq,
        y_ptr, syb, syp, syq, bias_ptr, sbp, sbq, R, P, T, S, Q,
        HAS_BIAS, BP, BT, BS, BQ, PREC, DOT_F32,
    )  # fmt: skip


@triton.jit
def backward_kernel(
    # input gradient: a chain (see chain_tile) with its own strides and sizes
    g_ptr, gsb, gst, gss,
    da_ptr, dsar, dsap, dsat,
    dc_ptr, dscr, dscs, dscq,
    dx_ptr, dxsb, dxsp, dxsq,
    DR, DP, DT, DS, DQ, D_TILES_Q, D_TILES_PQ, N_DX,
    # factor gradients: two wgrad_tile problems, U (first factor) and V (second)
    ul_ptr, ulsb, ulsp, ulss, um_ptr, umsr, ums, umt, un_ptr, unsb, unst, unsq,
    UP, US, UT, UQ, U_TILES_Q, U_TILES_PQ, U_OFF, U_R_STRIDE, N_U,
    vl_ptr, vlsb, vlsp, vlss, vm_ptr, vmsr, vms, vmt, vn_ptr, vnsb, vnst, vnsq,
    VP, VS, VT, VQ, V_TILES_Q, V_TILES_PQ, V_OFF, V_R_STRIDE, N_V,
    # bias gradient: per-chunk sums of G_b (G_ROWS, G_COLS)
    G_ROWS, G_COLS, GB_TILES_Q, GB_TILES_PQ, GB_OFF, N_GB,
    w_ptr, W_SPLIT_STRIDE, R, CHUNK, NROWS,
    DBP: tl.constexpr, DBT: tl.constexpr, DBS: tl.constexpr, DBQ: tl.constexpr,
    UBP: tl.constexpr, UBS: tl.constexpr, UBT: tl.constexpr, UBQ: tl.constexpr,
    VBP: tl.constexpr, VBS: tl.constexpr, VBT: tl.constexpr, VBQ: tl.constexpr,
    GBP: tl.constexpr, GBQ: tl.constexpr,
    PREC: tl.constexpr,
    DOT_F32: tl.constexpr,
):  # fmt: skip
    # One launch for the whole backward: the first N_U and N_V programs compute the
    # factor gradients (each sums a chunk of rows, so they run longest and start first),
    # the next N_GB the bias gradient, the rest the input gradient (one per row tile).
    pid = tl.program_id(0)
    if pid < N_U:
        q = pid
        split = q // (R * U_TILES_PQ)
        rest = q % (R * U_TILES_PQ)
        r = rest // U_TILES_PQ
        tile = rest % U_TILES_PQ
        b_lo = split.to(tl.int64) * CHUNK
        b_hi = tl.minimum(b_lo + CHUNK, NROWS)
        wgrad_tile(
            b_lo, b_hi, r, tile // U_TILES_Q, tile % U_TILES_Q,
            ul_ptr, ulsb, ulsp, ulss, um_ptr, umsr, ums, umt, un_ptr, unsb, unst, unsq,
            w_ptr + split.to(tl.int64) * W_SPLIT_STRIDE + U_OFF + r * U_R_STRIDE,
            UQ, 1, UP, US, UT, UQ, UBP, UBS, UBT, UBQ, PREC, DOT_F32,
        )  # fmt: skip
    elif pid < N_U + N_V:
        q = pid - N_U
        split = q // (R * V_TILES_PQ)
        rest = q % (R * V_TILES_PQ)
        r = rest // V_TILES_PQ
        tile = rest % V_TILES_PQ
        b_lo = split.to(tl.int64) * CHUNK
        b_hi = tl.minimum(b_lo + CHUNK, NROWS)
        wgrad_tile(
            b_lo, b_hi, r, tile // V_TILES_Q, tile % V_TILES_Q,
            vl_ptr, vlsb, vlsp, vlss, vm_ptr, vmsr, vms, vmt, vn_ptr, vnsb, vnst, vnsq,
            w_ptr + split.to(tl.int64) * W_SPLIT_STRIDE + V_OFF + r * V_R_STRIDE,
            VQ, 1, VP, VS, VT, VQ, VBP, VBS, VBT, VBQ, PREC, DOT_F32,
        )  # fmt: skip
    elif pid < N_U + N_V + N_GB:
        q = pid - N_U - N_V
        split = q // GB_TILES_PQ
        tile = q % GB_TILES_PQ
        rp = (tile // GB_TILES_Q) * GBP + tl.arange(0, GBP)
        rq = (tile % GB_TILES_Q) * GBQ + tl.arange(0, GBQ)
        mask = (rp[:, None] < G_ROWS) & (rq[None, :] < G_COLS)
        acc_dt = w_ptr.dtype.element_ty
        acc = tl.zeros((GBP, GBQ), dtype=acc_dt)
        b_lo = split.to(tl.int64) * CHUNK
        b_hi = tl.minimum(b_lo + CHUNK, NROWS)
        for b in range(b_lo, b_hi):
            gt = tl.load(
                g_ptr + b * gsb + rp[:, None] * G_COLS + rq[None, :],
                mask=mask,
                other=0.0,
            )
            acc += gt.to(acc_dt)
        w_s = w_ptr + split.to(tl.int64) * W_SPLIT_STRIDE + GB_OFF
        tl.store(w_s + rp[:, None] * G_COLS + rq[None, :], acc, mask=mask)
    else:
        q = pid - N_U - N_V - N_GB
        # int64 like the loop variable b of the branches above: Triton types a name
        # assigned in several branches of one if/elif chain alike.
        b = (q // D_TILES_PQ).to(tl.int64)
        tile = q % D_TILES_PQ
        chain_tile(
            b, tile // D_TILES_Q, tile % D_TILES_Q,
            g_ptr, gsb, gst, gss, da_ptr, dsar, dsap, dsat, dc_ptr, dscr, dscs, dscq,
            dx_ptr, dxsb, dxsp, dxsq, dx_ptr, 0, 0, DR, DP, DT, DS, DQ,
            False, DBP, DBT, DBS, DBQ, PREC, DOT_F32,
        )  # fmt: skip
