"""The paper's experiments, one module each, run from the command line.

``implicitdiff <experiment> [options]`` (or ``python -m implicitdiff``) runs one of them; each
module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(options) -> dict`` and is
listed in :data:`EXPERIMENTS`. The experiments need the ``examples`` extra (scikit-learn,
matplotlib, optax, tqdm): ``pip install "implicitdiff[examples]"``.
"""

EXPERIMENTS: tuple[str, ...] = (
    "svm_hyperopt",
    "distillation",
    "dictionary",
    "md_sensitivity",
    "jacobian_precision",
)
"""Module names under :mod:`implicitdiff.experiments`, in the order ``--help`` lists them."""
