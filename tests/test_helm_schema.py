"""deploy/k8s/values.yaml against the ``values.schema.json`` of Dagster's Helm chart, when one is given.

The chart is published only in Dagster's Helm repository (and its source in the dagster
repository), on no package index this project installs from, so its schema cannot be part of an
offline CI run and is not copied into this repository. Point ``AWB_DAGSTER_CHART`` at either

- the unpacked chart (``helm pull dagster/dagster --version 1.13.27 --untar``, then the
  ``dagster`` folder): its ``values.yaml`` defaults are coalesced with ours the way Helm does
  (maps merge, our lists and scalars replace, a null deletes) and the result is validated, as
  ``helm install`` validates it; or
- a ``values.schema.json`` alone: our overrides are validated without the schema's ``required``
  lists (the chart's defaults supply those keys): every key we set must be one the schema allows
  (``additionalProperties: false`` in most sections), with the type and enum it declares.

References to kubernetesjsonschema.dev (the Kubernetes objects inside: volumes, resources,
tolerations, env entries) are not followed offline; those fields are checked for their kind
(object, array) only. tests/test_k8s.py builds the run pod from the same values with dagster-k8s.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from awb_dagster.paths import REPO_ROOT

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")

CHART_ENV = "AWB_DAGSTER_CHART"
VALUES_PATH = REPO_ROOT / "deploy" / "k8s" / "values.yaml"
KUBERNETES_SCHEMAS = "https://kubernetesjsonschema.dev/"


def coalesce(defaults: Any, overrides: Any) -> Any:
    """Helm's coalescing of a chart's defaults with user values: maps merge key by key, any
    other user value (list, scalar) replaces the default, and a user null deletes the key."""
    if not isinstance(defaults, dict) or not isinstance(overrides, dict):
        return copy.deepcopy(overrides)
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = coalesce(merged.get(key), value)
    return merged


def offline_schema(schema: Any, *, drop_required: bool) -> Any:
    """The schema without its references to kubernetesjsonschema.dev (their sibling ``type``
    stays) and, with ``drop_required``, without any ``required`` list."""
    if isinstance(schema, list):
        return [offline_schema(item, drop_required=drop_required) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kept = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(KUBERNETES_SCHEMAS):
            continue
        if key == "required" and drop_required and isinstance(value, list):
            continue
        kept[key] = offline_schema(value, drop_required=drop_required)
    return kept


def schema_errors(schema: dict[str, Any], values: dict[str, Any], *, chart_defaults: dict[str, Any] | None) -> list[str]:
    """Every violation of ``schema`` by ``values`` (coalesced over ``chart_defaults`` when given),
    as ``path: message`` lines."""
    document = coalesce(chart_defaults, values) if chart_defaults is not None else values
    prepared = offline_schema(schema, drop_required=chart_defaults is None)
    validator_class = jsonschema.validators.validator_for(prepared, default=jsonschema.Draft7Validator)
    validator_class.check_schema(prepared)
    validator = validator_class(prepared)
    return sorted(
        f"{'.'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    )


def chart_from_env() -> tuple[Path, dict[str, Any], dict[str, Any] | None]:
    """(schema path, schema, chart defaults or None) named by AWB_DAGSTER_CHART; skips without it."""
    given = os.environ.get(CHART_ENV)
    if not given:
        pytest.skip(
            f"{CHART_ENV} is not set: Dagster's Helm chart is on no package index this project installs "
            "from; set it to the chart folder of `helm pull dagster/dagster --version 1.13.27 --untar` "
            "(or to its values.schema.json) to validate deploy/k8s/values.yaml against the chart's schema"
        )
    path = Path(given)
    schema_path = path / "values.schema.json" if path.is_dir() else path
    if not schema_path.is_file():
        pytest.fail(f"{CHART_ENV}={given}: no values.schema.json there (give the unpacked chart folder or the file)")
    defaults_path = schema_path.parent / "values.yaml"
    defaults = yaml.safe_load(defaults_path.read_text()) if path.is_dir() and defaults_path.is_file() else None
    return schema_path, json.loads(schema_path.read_text()), defaults


def test_coalesce_follows_helm():
    defaults = {"a": {"b": 1, "c": [1, 2], "d": "x"}, "e": True, "f": {"g": 1}}
    overrides = {"a": {"b": 2, "c": [3], "d": None}, "f": {"h": 2}}
    assert coalesce(defaults, overrides) == {"a": {"b": 2, "c": [3]}, "e": True, "f": {"g": 1, "h": 2}}
    assert defaults["a"]["d"] == "x", "the defaults are not modified"


def test_offline_schema_keeps_what_can_be_checked():
    schema = {
        "properties": {
            "volumes": {"type": "array", "items": {"$ref": f"{KUBERNETES_SCHEMAS}v1.18.0/_definitions.json#/x"}},
            "k8s": {"type": "object", "$ref": f"{KUBERNETES_SCHEMAS}v1.18.0/_definitions.json#/y"},
            "enabled": {"type": "boolean"},
        },
        "required": ["enabled"],
        "additionalProperties": False,
    }
    assert schema_errors(schema, {"volumes": [{"name": "v"}], "k8s": {"any": 1}}, chart_defaults=None) == []
    assert schema_errors(schema, {"k8s": [1]}, chart_defaults=None) == ["k8s: [1] is not of type 'object'"]
    assert schema_errors(schema, {"enabeld": True}, chart_defaults=None) == [
        "<root>: Additional properties are not allowed ('enabeld' was unexpected)"
    ]
    assert schema_errors(schema, {}, chart_defaults={}) == ["<root>: 'enabled' is a required property"]


def test_values_validate_against_the_chart_schema():
    schema_path, schema, defaults = chart_from_env()
    values = yaml.safe_load(VALUES_PATH.read_text())
    errors = schema_errors(schema, values, chart_defaults=defaults)
    mode = "coalesced with the chart's values.yaml" if defaults is not None else "overrides only, required lists dropped"
    assert not errors, f"{VALUES_PATH} against {schema_path} ({mode}):\n" + "\n".join(errors)


def test_chart_schema_refuses_a_misspelt_launcher_key():
    """The schema given is strict where our values rely on it: a typo in the run launcher's
    section (where the GPU request and the home's volume live) fails validation."""
    _, schema, defaults = chart_from_env()
    values = yaml.safe_load(VALUES_PATH.read_text())
    values["runLauncher"]["config"]["k8sRunLauncher"]["envVar"] = ["AWB_DEVICE=cuda"]
    errors = schema_errors(schema, values, chart_defaults=defaults)
    assert any("envVar" in error for error in errors), errors
