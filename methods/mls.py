"""Moving-least-squares projection onto a point set's manifold (Sober & Levin 2016), batched.

For every point r of a set P (n x D), with its `neighbours` nearest points of P:
  step 1 (Eq. 5): find a local d-dimensional affine space H through q with r - q normal to H,
    iterating a fixed number of times: weights theta(||p_j - q||), q_w the weighted mean,
    H spanned by the top-d weighted principal directions around q_w, q = q_w + U U^T (r - q_w);
  step 2 (Eq. 6): a weighted least-squares polynomial (degree 1 or 2) of the neighbours'
    offsets over their coordinates in H; its constant term, added to q, is the projection.
theta(s) = 1 / (s^2 + eps), with s measured in units of the mean neighbour distance (the
paper's 1/s^2, made finite at 0 and scale-free). Everything is batched tensor algebra, no
per-point Python loop; step 1 runs on the neighbours' Gram matrices (docs/methods/nmt.md, Cost).
With `differentiable_geometry=False` the neighbours, weights and bases carry no gradient (an
eigenvector's gradient is unstable when eigenvalues nearly coincide); the projection stays
differentiable in the points through the means and the fit.
"""

from __future__ import annotations

import torch


def _poly_features(x: torch.Tensor, degree: int) -> torch.Tensor:
    """[1, x_a, (x_a x_b for a <= b when degree 2)] along the last axis."""
    columns = [torch.ones_like(x[..., :1]), x]
    if degree == 2:
        d = x.shape[-1]
        columns += [x[..., a:a + 1] * x[..., b:b + 1] for a in range(d) for b in range(a, d)]
    return torch.cat(columns, dim=-1)


def mls_project(points: torch.Tensor, dim: int, neighbours: int = 16, iterations: int = 5, degree: int = 1,
                eps: float = 1e-2, ridge: float = 1e-6, differentiable_geometry: bool = False) -> torch.Tensor:
    """Project each row of `points` (n x D) onto the MLS approximation of the set's manifold.

    Cost, with k neighbours and D features. The iterations of step 1 stay in the span of each
    point's neighbours: q, the weighted means and the basis are coefficient vectors over the
    neighbours, and every distance and projection comes from the neighbours' k x k Gram matrix, so
    after that Gram (O(n k^2 D)) an iteration costs O(n k^3), independent of D. The fit (step 2)
    needs only the polynomial's constant term: one row of the P x P inverse per point (a weight over
    its neighbours) instead of P x D coefficients. Only a few passes over the n x k x D neighbours
    remain, in the differentiable final step.
    """
    n, _ = points.shape
    k = min(neighbours, n)
    geometry = points if differentiable_geometry else points.detach()
    squares = geometry.pow(2).sum(1)
    d2 = (squares[:, None] + squares[None, :] - 2 * geometry @ geometry.T).clamp_min(0)  # cdist is slower on CPU
    index = d2.topk(k, dim=1, largest=False).indices  # n x k (each point is its own nearest)
    near = points[index]  # n x k x D
    # step 1 is translation-invariant: work with the neighbours' offsets from their point r, whose
    # inner products carry no large common term to cancel in float32
    near_g = (near if differentiable_geometry else near.detach()) - geometry[:, None, :]
    scale2 = d2.gather(1, index).mean().clamp_min(1e-12)  # mean squared neighbour distance
    gram = near_g @ near_g.transpose(1, 2)  # n x k x k: the offsets' inner products
    norms2 = gram.diagonal(dim1=1, dim2=2)  # n x k

    def matvec(matrix, vector):
        return (matrix @ vector[..., None]).squeeze(-1)

    def weights(q_dots, q_norm2):
        """theta over the neighbours' squared distances to q (given N q and |q|^2), normalised."""
        s2 = (norms2 - 2 * q_dots + q_norm2[:, None]).clamp_min(0) / scale2
        w = 1.0 / (s2 + eps)
        return w / w.sum(dim=1, keepdim=True)  # n x k

    q_dots, q_norm2 = torch.zeros_like(norms2), torch.zeros_like(scale2).expand(n)  # q starts at r (offset 0)
    for _ in range(iterations):
        w = weights(q_dots, q_norm2)
        mean_dots = matvec(gram, w)  # N m, m = w^T N the weighted mean
        mean_norm2 = (w * mean_dots).sum(1)
        centred = gram - mean_dots[:, :, None] - mean_dots[:, None, :] + mean_norm2[:, None, None]
        root = w.sqrt()
        values, vectors = torch.linalg.eigh(root[:, :, None] * centred * root[:, None, :])  # ascending
        top = vectors[..., -dim:] * root[..., None]  # n x k x dim
        # the basis U = N^T T: the top weighted principal directions, unit length (||C^T v||^2 = eigenvalue);
        # a direction whose eigenvalue is rounding noise (fewer neighbours than dim + 1, or a flat
        # neighbourhood) is dropped, a zero column, rather than blown up to a random unit vector
        top_values = values[:, None, -dim:]
        real = top_values > 1e-5 * values[:, None, -1:].clamp_min(1e-30)
        scale = torch.where(real, top_values.clamp_min(1e-30).rsqrt(), torch.zeros_like(top_values))
        coefficients = (top - w[..., None] * top.sum(1, keepdim=True)) * scale
        # q = m + U U^T (r - m), as coefficients over the offsets: w + T (T^T N (0 - m))
        along = (-mean_dots[:, None, :] @ coefficients).squeeze(1)  # n x dim
        q = w + matvec(coefficients, along)
        q_dots = matvec(gram, q)
        q_norm2 = (q * q_dots).sum(1)
    w = weights(q_dots, q_norm2)
    basis = near_g.transpose(1, 2) @ coefficients  # n x D x dim
    if not differentiable_geometry:
        w, basis = w.detach(), basis.detach()

    def weighted_mean(weights_, rows):
        return (weights_[:, None, :] @ rows).squeeze(1)

    # the origin, once more from the points themselves, so that the projection is differentiable in them
    mean = weighted_mean(w, near)
    origin = mean + ((points - mean)[:, None, :] @ basis @ basis.transpose(1, 2)).squeeze(1)
    coords = near @ basis - (origin[:, None, :] @ basis)  # n x k x dim: the neighbours' offsets in H
    phi = _poly_features(coords, degree)  # n x k x P
    weighted = phi * w[..., None]
    fit = weighted.transpose(1, 2) @ phi + ridge * torch.eye(phi.shape[-1], device=points.device, dtype=points.dtype)
    # the fit's constant term is e_0^T G^-1 Phi^T W offsets = a^T offsets, a = W Phi G^-1 e_0 (G symmetric)
    first = torch.zeros(n, phi.shape[-1], 1, device=points.device, dtype=points.dtype)
    first[:, 0] = 1
    a = (weighted @ torch.linalg.solve(fit, first)).squeeze(2)  # n x k
    return origin + weighted_mean(a, near) - a.sum(1, keepdim=True) * origin
