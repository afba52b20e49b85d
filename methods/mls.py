"""Moving-least-squares projection onto a point set's manifold (Sober & Levin 2016), batched.

For every point r of a set P (n x D), with its `neighbours` nearest points of P:
  step 1 (Eq. 5): find a local d-dimensional affine space H through q with r - q normal to H,
    iterating a fixed number of times: weights theta(||p_j - q||), q_w the weighted mean,
    H spanned by the top-d weighted principal directions around q_w, q = q_w + U U^T (r - q_w);
  step 2 (Eq. 6): a weighted least-squares polynomial (degree 1 or 2) of the neighbours'
    offsets over their coordinates in H; its constant term, added to q, is the projection.
theta(s) = 1 / (s^2 + eps), with s measured in units of the mean neighbour distance (the
paper's 1/s^2, made finite at 0 and scale-free). Everything is tensor algebra: no per-point
Python loop. With `differentiable_geometry=False` the neighbours, weights and bases carry no
gradient (an eigenvector's gradient is unstable when eigenvalues nearly coincide); the
projection stays differentiable in the points through the means and the fit.
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
    """Project each row of `points` (n x D) onto the MLS approximation of the set's manifold."""
    n, _ = points.shape
    k = min(neighbours, n)
    geometry = points if differentiable_geometry else points.detach()
    d2 = torch.cdist(geometry, geometry).pow(2)
    index = d2.topk(k, dim=1, largest=False).indices  # n x k (each point is its own nearest)
    near = points[index]  # n x k x D
    near_g = geometry[index]
    scale2 = d2.gather(1, index).mean().clamp_min(1e-12)  # mean squared neighbour distance
    q = geometry.clone()

    def weights(origin):
        s2 = (near_g - origin[:, None, :]).pow(2).sum(-1) / scale2
        w = 1.0 / (s2 + eps)
        return w / w.sum(dim=1, keepdim=True)  # n x k

    for _ in range(iterations):
        w = weights(q)
        mean = (w[..., None] * near_g).sum(1)
        centred = (near_g - mean[:, None, :]) * w.sqrt()[..., None]  # n x k x D
        values, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))  # k x k Grams, ascending
        basis = centred.transpose(1, 2) @ vectors[..., -dim:]  # n x D x dim
        basis = basis / basis.norm(dim=1, keepdim=True).clamp_min(1e-12)
        q = mean + ((geometry - mean)[:, None, :] @ basis @ basis.transpose(1, 2)).squeeze(1)
    w = weights(q)
    if not differentiable_geometry:
        w, basis = w.detach(), basis.detach()
    # the origin, once more from the points themselves, so that the projection is differentiable in them
    mean = (w[..., None] * near).sum(1)
    origin = mean + ((points - mean)[:, None, :] @ basis @ basis.transpose(1, 2)).squeeze(1)
    offsets = near - origin[:, None, :]  # n x k x D
    coords = offsets @ basis  # n x k x dim
    phi = _poly_features(coords, degree)  # n x k x P
    weighted = phi * w[..., None]
    gram = weighted.transpose(1, 2) @ phi + ridge * torch.eye(phi.shape[-1], device=points.device, dtype=points.dtype)
    coefficients = torch.linalg.solve(gram, weighted.transpose(1, 2) @ offsets)  # n x P x D
    return origin + coefficients[:, 0, :]
