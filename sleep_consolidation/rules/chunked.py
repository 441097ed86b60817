"""Chunkwise-parallel forms of the built-in rules (the WY / UT form of fla, GDN, Mamba-2).

The sequence is cut into chunks of C tokens. Inside a chunk everything is a dense matrix
product; a thin `lax.scan` carries the fast weights S [B, H, d_k, d_v] from chunk to chunk.
Per chunk and head (K, Q: C x d_k, V: C x d_v, g the cumulative log-decay inside the chunk,
Gamma[i, j] = exp(g_i - g_j) for i >= j, else 0):

    A      = strictly_lower((beta K) K^T * Gamma)          # delta rules only
    U      = (I + A)^-1 (beta V)                           # unit lower-triangular solve
    W      = (I + A)^-1 (beta K * exp(g))
    V_new  = U - W S0                                      # = beta_t (v_t - read_t) per row
    O      = (Q * exp(g)) S0 + ((Q K^T) * Gamma) V_new     # causal within the chunk
    S_next = exp(g_last) S0 + (K * exp(g_last - g))^T V_new

The Hebbian rules skip the solve (V_new = beta V); the ungated rules skip every decay.
Everything that does not depend on S (decays, A, (I + A)^-1, U, W, the scores) is computed
for all chunks at once outside the scan, so the scan body is three small matmuls
([W; Q e^g] S, P V_new, Kd^T V_new). (I + A)^-1 is formed explicitly by blockwise forward
substitution (matmuls only, closed-form VJP) and applied by matmuls; see
`_unit_lower_inverse` for why not `lax.linalg.triangular_solve`. `remat=True` (the default)
wraps the chunk body in `jax.checkpoint`: backprop then keeps one S per chunk, not per token.

Numerics: all work is in float32 (matmuls at JAX's default precision: set
`jax_default_matmul_precision` on accelerators that would otherwise use TF32/bf16 passes).
Decays are handled in log space and every exponent is a non-positive *segment sum*
(`sum_{j < l <= i} log alpha_l`, a product with a constant 0/1 triangular matrix, rather
than the difference g_i - g_j of two large cumulative sums), so tiny alphas neither
overflow nor lose precision; masked entries are zeroed before `exp` so their gradients
stay finite. alpha is floored at the smallest normal float32 before the log.

Masking: positions where `valid` is False (and the padding up to a multiple of C) get
beta = 0 and alpha = 1, which leaves S exactly unchanged for all four rules (for `hebbian`,
whose update ignores the gates, the write strength is the mask itself). Outputs at those
positions are unspecified.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sleep_consolidation.layers import loops
from sleep_consolidation.layers.linear import matmul, transposed

_TINY = float(jnp.finfo(jnp.float32).tiny)


def _decays(la):
    """Log-space decays of a chunk from log_a [..., C] (all exponents <= 0, no cancellation).

    Returns (Gamma [..., C, C] = exp(sum_{j < l <= i} log_a[l]) on and below the diagonal
    else 0, exp(g) [..., C] with g_i = sum_{l <= i}, exp(sum_{l > i}) [..., C], and the
    whole chunk's decay exp(sum_l) [...]). The segment sums are products with constant
    triangular 0/1 matrices (dense matmuls; `cumsum` lowers to a slow reduce-window on CPU).
    """
    C = la.shape[-1]
    incl = jnp.tril(jnp.ones((C, C), la.dtype))  # incl[i, l] = l <= i
    strict = jnp.tril(jnp.ones((C, C), bool), -1)  # strict[l, j] = l > j
    x = jnp.where(strict, la[..., :, None], 0.0)  # x[l, j] = log_a[l] if l > j
    seg = jnp.einsum("il,...lj->...ij", incl, x)  # sum_{j < l <= i} log_a[l]
    causal = incl > 0
    Gamma = jnp.where(causal, jnp.exp(jnp.where(causal, seg, 0.0)), 0.0)
    g = jnp.einsum("il,...l->...i", incl, la)
    g_to_end = jnp.einsum("lj,...l->...j", strict.astype(la.dtype), la)
    return Gamma, jnp.exp(g), jnp.exp(g_to_end), jnp.exp(g[..., -1])


_BASE_BLOCK = 16


def _forward_substitution(M):
    """Inverse of a small unit lower-triangular M [..., b, b], row by row (b unrolled steps):
    row_i of M^-1 = e_i - M[i, :i] (rows 0..i-1 of M^-1)."""
    b = M.shape[-1]
    eye = jnp.eye(b, dtype=M.dtype)
    rows = jnp.broadcast_to(eye[:1], (*M.shape[:-2], 1, b))
    for i in range(1, b):
        row = eye[i : i + 1] - M[..., i : i + 1, :i] @ rows
        rows = jnp.concatenate([rows, row], axis=-2)
    return rows


def _block_inverse(M):
    """Blockwise forward substitution: [[M11, 0], [M21, M22]]^-1 = [[T11, 0], [T21, T22]]
    with T21 = -T22 M21 T11, down to blocks of <= 16 (the scheme of fla's `solve_tril`)."""
    C = M.shape[-1]
    if C <= _BASE_BLOCK:
        return _forward_substitution(M)
    h = C // 2
    T11 = _block_inverse(M[..., :h, :h])
    T22 = _block_inverse(M[..., h:, h:])
    T21 = -(T22 @ (M[..., h:, :h] @ T11))
    top = jnp.concatenate([T11, jnp.zeros((*M.shape[:-2], h, C - h), M.dtype)], axis=-1)
    return jnp.concatenate([top, jnp.concatenate([T21, T22], axis=-1)], axis=-2)


@jax.custom_vjp
def _unit_lower_inverse(M):
    """Inverse of unit lower-triangular M [..., C, C] (only its strictly lower part is read).

    Matmuls only, with a closed-form VJP (d M = -T^T G T^T on the strictly lower part).
    Not `lax.linalg.triangular_solve`: on XLA:CPU (jaxlib 0.10) that op stalls for tens of
    ms from 32 x 32 up, and hangs outright when it sits under nested `jax.checkpoint`s inside
    scans (e.g. the chunk body under `forward(..., remat="pass")`).
    """
    return _block_inverse(M)


def _unit_lower_inverse_fwd(M):
    T = _block_inverse(M)
    return T, T


def _unit_lower_inverse_bwd(T, G):
    C = T.shape[-1]
    dM = -(transposed(T) @ G @ jnp.swapaxes(T, -1, -2))  # T^T materialised: the fast form
    return (jnp.where(jnp.tril(jnp.ones((C, C), bool), -1), dM, 0.0),)


_unit_lower_inverse.defvjp(_unit_lower_inverse_fwd, _unit_lower_inverse_bwd)


def chunk_form(S0, q, k, v, log_decay, write, erase, valid, chunk_size, *, remat):
    """The shared kernel: S_t = d_t S_{t-1} + k_t (a_t v_t - b_t S'^T k_t)^T per token, with
    S' = d_t S_{t-1}, in chunks (shapes as in the module docstring).

    Args:
      log_decay: log d_t [B, T, H] (<= 0), or None for no decay (the ungated rules).
      write: a_t [B, T, H], the write strength (beta for the built-in rules).
      erase: b_t [B, T, H], the erase strength of the delta term, or None for none (the
        Hebbian rules: then no triangular inverse is needed).
    """
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    C = int(chunk_size)
    if C < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    # A chunk longer than the sequence would be mostly padding (rule110:cpu's windows of 8
    # under chunk_size 16: 1.5x the step time at N = 1; BUILD_NOTES.md, "A chunk no longer
    # than its sequence").
    C = min(C, T)
    n = -(-T // C)
    Tp = n * C
    f32 = jnp.float32
    gated, delta = log_decay is not None, erase is not None
    same = erase is write  # the built-in delta rules: one (I + A)^-1 diag(beta) serves both
    q, k, v, write = (x.astype(f32) for x in (q, k, v, write))
    S0 = S0.astype(f32)
    log_decay = log_decay.astype(f32) if gated else None
    erase = (write if same else erase.astype(f32)) if delta else None
    masked = valid is not None or Tp != T
    mask = jnp.ones((T,), bool) if valid is None else jnp.asarray(valid, bool)
    if mask.shape != (T,):
        raise ValueError(f"valid must have shape ({T},), got {mask.shape}")
    if Tp != T:
        pad = lambda x: jnp.pad(x, [(0, 0), (0, Tp - T)] + [(0, 0)] * (x.ndim - 2))
        q, k, v, write = pad(q), pad(k), pad(v), pad(write)
        log_decay = pad(log_decay) if gated else None
        erase = write if same else (pad(erase) if delta else None)
        mask = jnp.pad(mask, (0, Tp - T))
    if masked:  # masked and padded positions: no write, no erase, no decay (S unchanged)
        m = mask[None, :, None]
        write = jnp.where(m, write, 0.0)
        log_decay = jnp.where(m, log_decay, 0.0) if gated else None
        erase = write if same else (jnp.where(m, erase, 0.0) if delta else None)

    # Chunk-major layout, so the scan slices the leading axis and every matmul batches over
    # the leading (n, B, H): [B, Tp, H, d] -> [n, B, H, C, d]; gates -> [n, B, H, C].
    blk = lambda x: x.reshape(B, n, C, H, x.shape[-1]).transpose(1, 0, 3, 2, 4)
    gblk = lambda x: x.reshape(B, n, C, H).transpose(1, 0, 3, 2)
    Q, K, V, a = blk(q), blk(k), blk(v), gblk(write)[..., None]
    b = a if same else (gblk(erase)[..., None] if delta else None)
    causal = jnp.tril(jnp.ones((C, C), bool))

    if gated:
        Gamma, decay_in, decay_out, decay_chunk = _decays(gblk(log_decay))
        decay_in, decay_out = decay_in[..., None], decay_out[..., None]
        decay_chunk = decay_chunk[..., None, None]  # [n, B, H, 1, 1]
    else:
        Gamma = causal.astype(f32)

    Qd = Q * decay_in if gated else Q  # Q e^g: reads S0 decayed to each position
    Kd = K * decay_out if gated else K  # K e^(g_last - g): writes decayed to the chunk end
    # Batched products go through `linear.matmul` (fast-form backward on XLA:CPU).
    P = matmul(Q, K, transpose_b=True) * Gamma  # causal intra-chunk scores
    xs = {"KdT": transposed(Kd)}  # the body's write reads Kd^T: transposed once, up front
    if gated:
        xs["dc"] = decay_chunk
    if delta:
        strict = jnp.tril(jnp.ones((C, C), bool), -1)
        A = matmul(K, K, transpose_b=True) * Gamma * b  # b_i k_i.k_j Gamma_ij
        IA = jnp.where(strict, A, 0.0) + jnp.eye(C, dtype=f32)
        # (I + A)^-1 explicitly, then plain matmuls: on CPU ~2x faster than solving for the
        # 2 d right-hand sides directly.
        Tinv = _unit_lower_inverse(IA)
        Tb = Tinv * jnp.swapaxes(b, -1, -2)  # (I + A)^-1 diag(b)
        Ta = Tb if same else Tinv * jnp.swapaxes(a, -1, -2)  # (I + A)^-1 diag(a)
        xs["U"] = matmul(Ta, V)
        xs["WQ"] = jnp.concatenate([matmul(Tb, K * decay_in if gated else K), Qd], axis=-2)
        xs["P"] = P
    else:
        xs["U"] = V * a  # Hebbian: the written values do not depend on S
        xs["PU"] = matmul(P, xs["U"])
        xs["Qd"] = Qd

    def body(S, x):
        if delta:
            # [W; Q e^g] S in one matmul: [B, H, 2C, dk] @ [B, H, dk, dv].
            XS = matmul(x["WQ"], S)
            V_new = x["U"] - XS[..., :C, :]
            O = XS[..., C:, :] + matmul(x["P"], V_new)
        else:
            V_new = x["U"]
            O = matmul(x["Qd"], S) + x["PU"]
        S_dec = S * x["dc"] if gated else S
        return S_dec + matmul(x["KdT"], V_new), O

    if remat:
        body = jax.checkpoint(body)
    S_T, O = loops.scan(body, S0, xs)  # O: [n, B, H, C, dv]
    O = O.transpose(1, 0, 3, 2, 4).reshape(B, Tp, H, dv)[:, :T]  # via [B, n, C, H, dv]
    return O, S_T


def _make(delta: bool, gated: bool, name: str):
    def fn(S0, q, k, v, alpha, beta, theta, valid, chunk_size, *, remat: bool = True):
        del theta  # the built-in rules have no parameters
        log_decay = jnp.log(jnp.maximum(alpha.astype(jnp.float32), _TINY)) if gated else None
        if name == "hebbian":
            beta = jnp.ones(q.shape[:3], jnp.float32)  # gates ignored; the mask still applies
        erase = beta if delta else None
        return chunk_form(S0, q, k, v, log_decay, beta, erase, valid, chunk_size, remat=remat)

    fn.__name__ = f"chunked_{name}"
    fn.__qualname__ = fn.__name__
    fn.__doc__ = (
        f"Chunkwise-parallel `{name}`: (S0, q, k, v, alpha, beta, theta, valid, chunk_size) -> "
        "(o [B, T, H, d_v], S_T). `remat` wraps the chunk body in `jax.checkpoint`."
    )
    return fn


gated_delta = _make(delta=True, gated=True, name="gated_delta")
delta = _make(delta=True, gated=False, name="delta")
gated_hebbian = _make(delta=False, gated=True, name="gated_hebbian")
hebbian = _make(delta=False, gated=False, name="hebbian")

CHUNKED = {
    "gated_delta": gated_delta,
    "delta": delta,
    "gated_hebbian": gated_hebbian,
    "hebbian": hebbian,
}

__all__ = ["CHUNKED", "delta", "gated_delta", "gated_hebbian", "hebbian"]
