"""Instrument adapters: load pinned weights, preprocess, run a batch. No Dagster here.

Shared adapter helpers live in :mod:`awb_dagster.instruments.common`."""
