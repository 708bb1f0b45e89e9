"""Scenario files: the schema, the loader and the built-in ``*.yaml`` scenarios."""
from .loader import (
    ScenarioError, apply_overrides, builtin_dir, builtin_names, load_scenario, parse_yaml, resolve, validate,
)
from .schema import Scenario

__all__ = [
    "Scenario", "ScenarioError", "apply_overrides", "builtin_dir", "builtin_names", "load_scenario",
    "parse_yaml", "resolve", "validate",
]
