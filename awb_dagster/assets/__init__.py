"""Dagster assets: the plate catalog, the family assets (built by ``factory`` from the producers),
the atlas, pin status and drift."""

from awb_dagster.assets.plates import observe_plate_files_job, plate_and_pin_sensor, plate_catalog, plate_files

__all__ = ["observe_plate_files_job", "plate_and_pin_sensor", "plate_catalog", "plate_files"]
