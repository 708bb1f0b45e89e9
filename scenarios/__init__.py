"""Scenario files: the schema, the loader and the built-in ``*.yaml`` scenarios."""
from .loader import (
    ScenarioError, apply_overrides, builtin_dir, builtin_names, load_scenario, parse_yaml, resolve, validate,
)
from .registry import REGISTRY, ModelEntry, Registry
from .schema import Scenario

__all__ = [
    "REGISTRY", "ModelEntry", "Registry", "Scenario", "ScenarioError", "apply_overrides", "builtin_dir", "builtin_names", "load_scenario",
    "parse_yaml", "resolve", "validate",
]
