"""Run output: the background writer. The layout and each table's files: :mod:`simcore.rundir`."""
from ..rundir import atomic_write_json, atomic_write_table
from .writer import RunWriter

__all__ = ["RunWriter", "atomic_write_json", "atomic_write_table"]
