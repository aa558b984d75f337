"""The plate × pin engine (Dagster-free): one plan → stream → seal → report loop that every
family runs through a producer. ``awb_dagster.assets.factory`` turns a producer into an asset."""

from awb_dagster.engine.core import PartitionReport, StepResult, run_step
from awb_dagster.engine.producer import PinSession, PlateOutput, Producer
from awb_dagster.engine.values import Json, Markdown, Table

__all__ = [
    "Json",
    "Markdown",
    "PartitionReport",
    "PinSession",
    "PlateOutput",
    "Producer",
    "StepResult",
    "Table",
    "run_step",
]
