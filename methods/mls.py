"""Moving-least-squares projection onto a point set's manifold (Sober & Levin 2016), batched.

For every point r of a set P (n x D), with its `neighbours` nearest points of P:
  step 1 (Eq. 5): find a local d-dimensional affine space H through q with r - q normal to H,
    iterating a fixed number of times: weights theta(||p_j - q||), q_w the weighted mean,
    H spanned by the top-d weighted principal directions around q_w, q = q_w + U U^T (r - q_w);
  step 2 (Eq. 6): a weighted least-squares polynomial (degree 1 or 2) of the neighbours'
    offsets over their coordinates in H; its constant term, added to q, is the projection.
theta(s) = 1 / (s^2 + eps), with s measured in units of the mean neighbour distance (the
paper's 1/s^2, made finite at 0 and scale-free). Everything is batched tensor algebra, no
per-point Python loop, and no n x k x D tensor: every vector of a point's computation is a
combination of its own point and its neighbours, so the whole projection runs on inner products
read from the n x n Gram matrix of the points (docs/methods/nmt.md, Cost).
With `differentiable_geometry=False` the neighbours, weights and bases carry no gradient (an
eigenvector's gradient is unstable when eigenvalues nearly coincide); the projection stays
differentiable in the points through the means and the fit.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache

import torch


def _poly_features(x: torch.Tensor, degree: int) -> torch.Tensor:
    """[1, x_a, (x_a x_b for a <= b when degree 2)] along the last axis."""
    columns = [torch.ones_like(x[..., :1]), x]
    if degree == 2:
        d = x.shape[-1]
        columns += [x[..., a:a + 1] * x[..., b:b + 1] for a in range(d) for b in range(a, d)]
    return torch.cat(columns, dim=-1)


@cache
def _threads(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="mls-eigh")


def _eigh(matrices: torch.Tensor):
    """torch.linalg.eigh over a batch of small matrices. On the CPU LAPACK solves them one after
    another on one core, at ~30 us each for 16 x 16: the batch is split over the intra-op threads
    (results identical; grad mode passed on, as it is thread-local)."""
    flat = matrices.flatten(0, -3)
    workers = min(torch.get_num_threads(), flat.shape[0] // 32)
    if matrices.device.type != "cpu" or workers < 2:
        return torch.linalg.eigh(matrices)
    grad = torch.is_grad_enabled()

    def solve(chunk):
        with torch.set_grad_enabled(grad):
            return torch.linalg.eigh(chunk)

    parts = list(_threads(workers).map(solve, flat.chunk(workers)))
    return (torch.cat([values for values, _ in parts]).view(matrices.shape[:-1]),
            torch.cat([vectors for _, vectors in parts]).view(matrices.shape))


class _Combine(torch.autograd.Function):
    """(on_points + on_geometry) @ points in one product, the gradient reaching the points only
    through on_points: the geometry is the points' detached copy (same values)."""

    @staticmethod
    def forward(ctx, on_points, on_geometry, points):
        ctx.save_for_backward(on_points, points)
        return (on_points + on_geometry) @ points

    @staticmethod
    def backward(ctx, grad):
        on_points, points = ctx.saved_tensors
        grad_coefficients = grad @ points.transpose(-1, -2) if any(ctx.needs_input_grad[:2]) else None
        grad_points = on_points.transpose(-1, -2) @ grad if ctx.needs_input_grad[2] else None
        return grad_coefficients, grad_coefficients, grad_points


def mls_project(points: torch.Tensor, dim: int, neighbours: int = 16, iterations: int = 5, degree: int = 1,
                eps: float = 1e-2, ridge: float = 1e-6, differentiable_geometry: bool = False) -> torch.Tensor:
    """Project each row of `points` (n x D, or a batch of sets: ... x n x D, each set on its own)
    onto the MLS approximation of its set's manifold.

    Cost, with k neighbours and D features: the n x n Gram matrix of the points (O(n^2 D)), then
    per point O(k^3) algebra on the (k + 1) x (k + 1) inner products of the point and its
    neighbours, and one n x n by n x D product that forms the projections from their coefficients.
    Every vector of a point's computation (the weighted means, q, the basis of H, the origin) is
    held as coefficients over its point and its neighbours ("slots"): its inner products with any
    other such vector are read from the Gram matrix, never from an n x k x D tensor.
    """
    *sets, n, _ = points.shape
    k = min(neighbours, n)
    like = dict(device=points.device, dtype=points.dtype)
    # the projection commutes with translations: centre each set, so that inner products read from
    # the Gram matrix carry no large common term to cancel in float32
    centre = points.detach().mean(-2, keepdim=True)
    points = points - centre
    geometry = points if differentiable_geometry else points.detach()
    gram_pg = points @ geometry.transpose(-1, -2)  # n x n, <p_i, g_j>: gradient through the points only
    gram_gg = gram_pg if geometry is points else gram_pg.detach()  # <g_i, g_j>: the same values
    squares = gram_gg.diagonal(dim1=-2, dim2=-1)
    d2 = (squares[..., :, None] + squares[..., None, :] - 2 * gram_gg).clamp_min(0)
    index = d2.topk(k, dim=-1, largest=False).indices  # n x k (each point is its own nearest)
    scale2 = d2.gather(-1, index).mean((-2, -1), keepdim=True).clamp_min(1e-12)  # mean squared neighbour distance
    own = torch.arange(n, device=points.device).expand(*sets, n)
    slots = torch.cat([own[..., None], index], dim=-1)  # n x (k + 1): r, then its neighbours
    pairs = (slots[..., :, None] * n + slots[..., None, :]).flatten(-3)

    def local(gram):  # n x (k + 1) x (k + 1): the slots' inner products
        return gram.flatten(-2).gather(-1, pairs).view(*sets, n, k + 1, k + 1)

    local_gg, local_pg = local(gram_gg), local(gram_pg)
    # step 1 is translation-invariant: it works with the neighbours' offsets N_a = g_a - g_r
    gram = local_gg[..., 1:, 1:] - local_gg[..., 1:, :1] - local_gg[..., :1, 1:] + local_gg[..., :1, :1]  # n x k x k
    norms2 = gram.diagonal(dim1=-2, dim2=-1)  # n x k

    def matvec(matrix, vector):
        return (matrix @ vector[..., None]).squeeze(-1)

    def weights(q_dots, q_norm2):
        """theta over the neighbours' squared distances to q (given N q and |q|^2), normalised."""
        s2 = (norms2 - 2 * q_dots + q_norm2[..., None]).clamp_min(0) / scale2
        w = 1.0 / (s2 + eps)
        return w / w.sum(dim=-1, keepdim=True)  # n x k

    q_dots, q_norm2 = torch.zeros_like(norms2), torch.zeros_like(norms2[..., 0])  # q starts at r (offset 0)
    for _ in range(iterations):
        w = weights(q_dots, q_norm2)
        mean_dots = matvec(gram, w)  # N m, m = w^T N the weighted mean
        mean_norm2 = (w * mean_dots).sum(-1)
        centred = gram - mean_dots[..., :, None] - mean_dots[..., None, :] + mean_norm2[..., None, None]
        root = w.sqrt()
        values, vectors = _eigh(root[..., :, None] * centred * root[..., None, :])  # ascending
        top = vectors[..., -dim:] * root[..., None]  # n x k x dim
        # the basis U = N^T T: the top weighted principal directions, unit length (||C^T v||^2 = eigenvalue);
        # a direction whose eigenvalue is rounding noise (fewer neighbours than dim + 1, or a flat
        # neighbourhood) is dropped, a zero column, rather than blown up to a random unit vector
        top_values = values[..., None, -dim:]
        real = top_values > 1e-5 * values[..., None, -1:].clamp_min(1e-30)
        scale = torch.where(real, top_values.clamp_min(1e-30).rsqrt(), torch.zeros_like(top_values))
        coefficients = (top - w[..., None] * top.sum(-2, keepdim=True)) * scale
        # q = m + U U^T (r - m), as coefficients over the offsets: w + T (T^T N (0 - m))
        along = (-mean_dots[..., None, :] @ coefficients).squeeze(-2)  # n x dim
        q = w + matvec(coefficients, along)
        q_dots = matvec(gram, q)
        q_norm2 = (q * q_dots).sum(-1)
    w = weights(q_dots, q_norm2)
    # the basis of H over the geometry's slots: U_c = sum_a T_ac (g_a - g_r)
    basis = torch.cat([-coefficients.sum(-2, keepdim=True), coefficients], dim=-2)  # n x (k + 1) x dim
    if not differentiable_geometry:
        w, basis = w.detach(), basis.detach()
    # the final step, from the points themselves, so that the projection is differentiable in them:
    # a vector a^T p_slots + b^T g_slots has coordinates along U of a^T (local_pg U) + b^T (local_gg U)
    points_on_basis, geometry_on_basis = local_pg @ basis, local_gg @ basis  # n x (k + 1) x dim
    mean = torch.cat([torch.zeros_like(w[..., :1]), w], dim=-1)  # over the points' slots
    along = ((torch.eye(1, k + 1, **like) - mean)[..., None, :] @ points_on_basis).squeeze(-2)  # U^T (r - mean)
    origin_g = matvec(basis, along)  # origin = mean^T p_slots + origin_g^T g_slots
    origin_on_basis = mean[..., None, :] @ points_on_basis + origin_g[..., None, :] @ geometry_on_basis
    coords = points_on_basis[..., 1:, :] - origin_on_basis  # n x k x dim: the neighbours' offsets in H
    phi = _poly_features(coords, degree)  # n x k x P
    weighted = phi * w[..., None]
    fit = weighted.transpose(-1, -2) @ phi + ridge * torch.eye(phi.shape[-1], **like)
    # the fit's constant term is e_0^T G^-1 Phi^T W offsets = a^T offsets, a = W Phi G^-1 e_0 (G symmetric)
    first = torch.eye(phi.shape[-1], 1, **like).expand(*fit.shape[:-1], 1)
    # solve_ex without its error check: linalg.solve reads the solver's status on the host (a GPU
    # sync every step); a system it could not solve gives NaN instead, which the loop's guard reports
    solution, info = torch.linalg.solve_ex(fit, first, check_errors=False)
    solution = torch.where((info == 0)[..., None, None], solution, torch.nan)
    a = (weighted @ solution).squeeze(-1)  # n x k
    # projection = origin + a^T (p_neighbours - origin)
    keep = 1 - a.sum(-1, keepdim=True)
    on_points = keep * mean + torch.cat([torch.zeros_like(a[..., :1]), a], dim=-1)
    on_geometry = keep * origin_g

    def dense(slot_coefficients):  # n x (k + 1) over the slots -> n x n over the set
        return torch.zeros(*sets, n, n, **like).scatter_add(-1, slots, slot_coefficients)

    if geometry is points:
        return dense(on_points + on_geometry) @ points + centre
    return _Combine.apply(dense(on_points), dense(on_geometry), points) + centre
