"""The model-agnostic engine: state pytrees, composed pure substeps, the scanned runner."""
from .model import Model, Params, State, Substep
from .ops import neighbor_sum, group_sum
from .rng import init_key, root_key, step_key, substep_key, uniform
from .runner import Chunk, HostPolicy, Simulation
from .schedule import Intervention, build_schedule, extend_schedule

__all__ = [
    "Chunk", "HostPolicy", "Intervention", "Model", "Params", "Simulation", "State", "Substep",
    "build_schedule", "extend_schedule", "group_sum", "init_key", "neighbor_sum", "root_key", "step_key", "substep_key",
]
