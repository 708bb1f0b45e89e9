"""LLM archetypes: group agents on the device, one LLM call per archetype, decisions as probabilities."""
from .archetypes import Groups, broadcast, group, per_agent
from .policy import LLM_METRICS, ArchetypePolicy, check_policy, make_policy
from .types import Backend, BackendUnavailable, ScoreRequest, ScoreResult

__all__ = [
    "ArchetypePolicy", "Backend", "BackendUnavailable", "Groups", "LLM_METRICS", "ScoreRequest", "ScoreResult",
    "broadcast", "check_policy", "group", "make_policy", "per_agent",
]
