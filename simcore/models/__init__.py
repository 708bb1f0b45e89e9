"""Models: one module of pure substeps per model, and ``build`` from a scenario.

Which scenario kind maps to which model is the model registry's (``scenarios/registry.py``): one
entry per model, naming its builder, checks, policy interface, metric groups and graph view.
"""
from .build import Built, GraphView, build, check, policy_interface, scheduled_params

__all__ = ["Built", "GraphView", "build", "check", "policy_interface", "scheduled_params"]
