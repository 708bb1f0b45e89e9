"""Models: one module of pure substeps per model, and ``build`` from a scenario.

``build`` is the only place that knows which scenario kinds map to which model,
through the explicit table ``_BUILDERS``.
"""
from .build import Built, build, check, policy_interface, scheduled_params

__all__ = ["Built", "build", "check", "policy_interface", "scheduled_params"]
