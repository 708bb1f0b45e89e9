"""Economy model: workers choose hours under a planner's marginal tax schedule (the LLM Economist)."""
from .init import init, sample_workers
from .model import (DECISION_TARGETS, PERSONAS, PLANNERS, SCHEDULED, EconomyConfig, EconomyState, atkinson,
                    best_response, gini, hill_pareto, make_model, option_table, relaxed_welfare,
                    saez_rates, saez_top_rate, tax_of)

__all__ = ["DECISION_TARGETS", "PERSONAS", "PLANNERS", "SCHEDULED", "EconomyConfig", "EconomyState", "atkinson",
           "best_response", "gini", "hill_pareto", "init", "make_model", "option_table",
           "relaxed_welfare", "saez_rates", "saez_top_rate", "sample_workers", "tax_of"]
