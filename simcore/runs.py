"""Run a scenario end to end: the names ``simcore.runs`` has always offered, now owned by :mod:`simcore.session`.

Kept so ``from simcore.runs import run_scenario, make_simulation`` keeps working; new code
imports :mod:`simcore.session`. (This module imports the session; nothing imports back.)
"""
from __future__ import annotations

from .session import (RunSession, default_run_dir, device_description, git_revision, make_archetype_policy,
                      make_simulation, manifest_for, resume_run, run_scenario, versions)

__all__ = ["RunSession", "default_run_dir", "device_description", "git_revision", "make_archetype_policy",
           "make_simulation", "manifest_for", "resume_run", "run_scenario", "versions"]
