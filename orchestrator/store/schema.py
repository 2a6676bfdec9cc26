"""The results table: one row per (trial, eval split). Fixed up front and versioned, because
pyarrow.dataset takes its schema from the first file it reads and silently drops later columns.

The columns are declared once, in ``orchestrator/sweep/columns.py``; this module gives each its
Arrow type. Config columns are flattened with a ``cfg.`` prefix (``cfg.model.recall``,
``cfg.train.lr``) and typed from fpr_core's dataclass fields (``columns.config_kind``: a float field
is float64, an Optional[float] a nullable float64, a tuple of strings a list of strings, a mapping
its ``str()``). Tables written before schema 4 hold every config column as ``str(value)``:
``parquet.conform`` reads them back into these types.
"""
from __future__ import annotations

import functools

import pyarrow as pa

from orchestrator.sweep.columns import COLUMNS, Kind, config_columns, config_kinds  # noqa: F401 (config_columns: re-exported)

SCHEMA_VERSION = "4"
"""2: per-instance halting flags, the implicit input-derivative, basin-jump fractions, the probe
subset, and the test-time compute curve (schema-1 tables load with these columns null).
3: the halting protocol of each row (``halting``; older rows read as 'trained'), the share of
instances that ended at the cap and the cap-bound flag (docs/halting.md).
4: config columns keep their types (schema <= 3 stored each as ``str(value)``)."""
TEXT_CONFIG_VERSIONS = ("1", "2", "3")
"""Schema versions whose config columns are all strings."""

STATUSES = ("ok", "failed", "diverged", "stopped", "timed_out")
FINAL_STATUSES = ("ok", "diverged", "stopped", "timed_out")
"""A trial whose rows file holds one of these is done; 'failed' trials run again on resume. A
'timed_out' trial (it ran past the spec's max_trial_minutes) is done too: a resume under the same
limit would only time it out again. To give it more time, run the spec with a higher limit into a
new results folder (docs/faults.md)."""

ARROW_TYPES: dict[Kind, pa.DataType] = {
    "str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
    "time": pa.timestamp("us", tz="UTC"), "floats32": pa.list_(pa.float32()), "floats": pa.list_(pa.float64()),
    "ints": pa.list_(pa.int64()), "bools": pa.list_(pa.bool_()), "strs": pa.list_(pa.string()),
}


@functools.lru_cache(maxsize=1)
def results_schema() -> pa.Schema:
    """The schema every file is written with (an immutable object: built once)."""
    fields = [pa.field(c.name, ARROW_TYPES[c.kind], nullable=not c.required) for c in COLUMNS]
    fields += [pa.field(name, ARROW_TYPES[kind]) for name, kind in config_kinds().items()]
    return pa.schema(fields, metadata={"fpr_sweep.schema_version": SCHEMA_VERSION})
