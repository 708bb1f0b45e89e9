"""Run output: the background Parquet writer and the manifest."""
from .writer import RunWriter, atomic_write_json, atomic_write_table

__all__ = ["RunWriter", "atomic_write_json", "atomic_write_table"]
