"""Vectorized synthetic populations from public marginal tables (NYC by default)."""

from .synthetic import (
    AGE_BANDS,
    BOROUGHS,
    CATEGORICAL,
    EMPLOYED,
    GROUP_IDS,
    LABOR,
    NOT_IN_LABOR_FORCE,
    OCCUPATIONS,
    SEXES,
    UNEMPLOYED,
    Population,
    sample_population,
)
from .tables import DATA_DIR, Tables, load_tables

__all__ = [
    "AGE_BANDS",
    "BOROUGHS",
    "CATEGORICAL",
    "DATA_DIR",
    "EMPLOYED",
    "GROUP_IDS",
    "LABOR",
    "NOT_IN_LABOR_FORCE",
    "OCCUPATIONS",
    "SEXES",
    "UNEMPLOYED",
    "Population",
    "Tables",
    "load_tables",
    "sample_population",
]
