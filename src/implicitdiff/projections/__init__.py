"""Euclidean projections onto common sets, differentiable with respect to the point and the set.

Each function has the signature ``projection(x, hyperparams) -> p`` and returns

    p = argmin_{y ∈ C(hyperparams)} ½‖y − x‖²,

the closest point to ``x`` in a set ``C`` described by ``hyperparams``. Every projection runs
under ``jax.jit`` and ``jax.vmap`` (no Python branching on values), in float32 and float64, and
is differentiable with respect to ``x`` and to its array hyperparameters (almost everywhere: a
projection is piecewise smooth, with kinks where the set of active constraints changes). Such
projections are the building blocks of projected-gradient fixed points
T(x, θ) = proj(x − η∇f(x, θ), θ), whose derivatives :mod:`implicitdiff.implicit` computes.

Catalog (n = the number of entries of ``x``; sums and norms run over all of them):

=======================  ===============================================  ======================
function                 set C                                            hyperparams
=======================  ===============================================  ======================
``non_negative``         ℝ₊ⁿ (x may be a pytree)                          None
``box``                  {lower ≤ y ≤ upper} (x may be a pytree)          (lower, upper)
``hypercube``            [0, scale]ⁿ                                      scale = 1
``simplex``              {y ≥ 0, Σ y = scale}                             scale = 1
``sparse_simplex``       {y ≥ 0, Σ y = scale, at most max_nz nonzeros}    (scale, max_nz)
``l1_ball``              {‖y‖₁ ≤ radius}                                  radius = 1
``l1_sphere``            {‖y‖₁ = radius}                                  radius = 1
``l2_ball``              {‖y‖₂ ≤ radius} (x may be a pytree)              radius = 1
``l2_sphere``            {‖y‖₂ = radius} (x may be a pytree)              radius = 1
``linf_ball``            {‖y‖∞ ≤ radius} (x may be a pytree)              radius = 1
``hyperplane``           {aᵀy = b}                                        (a, b)
``halfspace``            {aᵀy ≤ b}                                        (a, b)
``affine_set``           {A y = b}, A of full row rank                    (A, b)
``box_section``          {α ≤ y ≤ β, wᵀy = c}                             (alpha, beta, w, c)
``second_order_cone``    {(t, z): ‖z‖₂ ≤ t}                               None
``psd_cone``             {Y = Yᵀ ⪰ 0}                                     None
``polyhedron``           {Ay = b, Gy ≤ h}, through the OSQP solver          (A, b, G, h)
``transport_polytope``   {P ≥ 0, P1 = a, Pᵀ1 = b}                         (a, b)
``birkhoff_polytope``    doubly stochastic matrices, U(1, 1)              None
=======================  ===============================================  ======================

The transport and Birkhoff polytopes also have KL (entropic) projections,
``kl_transport_polytope`` and ``kl_birkhoff_polytope``: argmin_{P ∈ U(a, b)} KL(P ‖ exp X), by
Sinkhorn in log space. The four are solved in the dual and differentiated implicitly (the dual's
stationarity through :func:`implicitdiff.custom_root`); see
:mod:`implicitdiff.projections._transport`.

``sparse_simplex`` and the two spheres are not convex: their projection is one of the closest
points (unique for almost every x). Hyperparameters that must be non-negative, or ordered
(lower ≤ upper), are checked when their values are concrete: a violation raises a ``ValueError``
that names the argument. Under ``jit``, ``vmap`` or a derivative (and inside a solver's compiled
``run``) values are traced and cannot raise: the projection then returns NaN where the set is
invalid, so that a solver using it ends with ``converged = False``. An empty ``x`` is a valid
point of ℝ⁰ for the balls, boxes and cones; the simplex and the ℓ₁ sphere of ℝ⁰ are empty sets,
and projecting onto them raises ``ValueError``.
"""

from implicitdiff._projection_ops import affine_set as affine_set
from implicitdiff._projection_ops import box as box
from implicitdiff._projection_ops import box_section as box_section
from implicitdiff._projection_ops import halfspace as halfspace
from implicitdiff._projection_ops import hypercube as hypercube
from implicitdiff._projection_ops import hyperplane as hyperplane
from implicitdiff._projection_ops import l1_ball as l1_ball
from implicitdiff._projection_ops import l1_sphere as l1_sphere
from implicitdiff._projection_ops import l2_ball as l2_ball
from implicitdiff._projection_ops import l2_sphere as l2_sphere
from implicitdiff._projection_ops import linf_ball as linf_ball
from implicitdiff._projection_ops import non_negative as non_negative
from implicitdiff._projection_ops import psd_cone as psd_cone
from implicitdiff._projection_ops import second_order_cone as second_order_cone
from implicitdiff._projection_ops import simplex as simplex
from implicitdiff._projection_ops import sparse_simplex as sparse_simplex
from implicitdiff.projections._polyhedron import polyhedron as polyhedron
from implicitdiff.projections._transport import birkhoff_polytope as birkhoff_polytope
from implicitdiff.projections._transport import kl_birkhoff_polytope as kl_birkhoff_polytope
from implicitdiff.projections._transport import kl_transport_polytope as kl_transport_polytope
from implicitdiff.projections._transport import transport_polytope as transport_polytope

__all__ = [
    "affine_set",
    "birkhoff_polytope",
    "box",
    "box_section",
    "halfspace",
    "hypercube",
    "hyperplane",
    "kl_birkhoff_polytope",
    "kl_transport_polytope",
    "l1_ball",
    "l1_sphere",
    "l2_ball",
    "l2_sphere",
    "linf_ball",
    "non_negative",
    "polyhedron",
    "psd_cone",
    "second_order_cone",
    "simplex",
    "sparse_simplex",
    "transport_polytope",
]
