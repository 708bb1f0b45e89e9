"""Social-media platform model (OASIS-like X / Reddit) as vectorized device state."""
from .init import init
from .model import (ACTIONS, DECISION_TARGETS, KINDS, PERSONAS, SCHEDULED, SocialConfig, SocialState, make_model,
                    post_valid)
from .recsys import author_factor, hot_offset, hot_relative, recency, reddit_hot

__all__ = ["ACTIONS", "DECISION_TARGETS", "KINDS", "PERSONAS", "SCHEDULED", "SocialConfig", "SocialState",
           "author_factor", "hot_offset", "hot_relative", "init", "make_model", "post_valid", "recency", "reddit_hot"]
