"""The Kubernetes deployment (deploy/k8s/) without a cluster: the run pod that dagster-k8s's
K8sRunLauncher builds from the Helm values for a family run, and the instance settings the chart
merges into its dagster.yaml, checked by Dagster itself.

The chart renders ``runLauncher.config.k8sRunLauncher`` into the instance's ``run_launcher``
config (camelCase keys become the launcher's snake_case fields, and the chart adds its service
account, instance config map, PostgreSQL secret and DAGSTER_HOME); ``launcher_config`` below does
the same for the fields these values use. The chart itself and its values.schema.json are not
on the package index; here the keys used are checked against the fields that schema lists for
these sections, and tests/test_helm_schema.py validates the whole file against a schema given
in AWB_DAGSTER_CHART (it skips without one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from awb_dagster.assets.factory import job_name
from awb_dagster.instance_storage import AwbInstance
from awb_dagster.paths import REPO_ROOT

dagster_k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (pip install -e '.[k8s]')")

DEPLOY = REPO_ROOT / "deploy" / "k8s"
VALUES = yaml.safe_load((DEPLOY / "values.yaml").read_text())
FAMILY_JOB = job_name("clip_embeddings")
CHART_FIXED = {  # what the chart's instance template adds for a release named "awb"
    "service_account_name": "awb-dagster",
    "instance_config_map": "awb-dagster-instance",
    "postgres_password_secret": "dagster-postgresql-secret",
    "dagster_home": "/opt/dagster/dagster_home",
    "job_namespace": "default",
}
# Fields the chart's values.schema.json allows in the sections these values set (additionalProperties
# is false there, so a misspelt key fails `helm install`).
SCHEMA_FIELDS = {
    ("runLauncher", "config", "k8sRunLauncher"): {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig",
    },
    ("runLauncher", "config", "k8sRunLauncher", "runK8sConfig"): {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata",
    },
    ("dagsterWebserver", "image"): {"repository", "tag", "pullPolicy"},
    ("dagsterDaemon", "image"): {"repository", "tag", "pullPolicy"},
    ("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator"): {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
        "dequeueUseThreads", "blockOpConcurrencyLimitedRuns",
    },
}  # fmt: skip
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: test, user: {token: test-only}}]
contexts: [{name: test, context: {cluster: test, user: test}}]
current-context: test
"""
RUN_K8S_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}


def _section(*path: str) -> Any:
    node = VALUES
    for key in path:
        node = node[key]
    return node


def launcher_config(kubeconfig: Path) -> dict[str, Any]:
    """``run_launcher.config`` as the chart renders it from the values (outside a cluster:
    a kubeconfig file instead of the in-cluster config)."""
    values = _section("runLauncher", "config", "k8sRunLauncher")
    return {
        **CHART_FIXED,
        "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig),
        "image_pull_policy": values["imagePullPolicy"],
        "env_config_maps": [source["name"] for source in values["envConfigMaps"]],
        "env_secrets": [source["name"] for source in values["envSecrets"]],
        "env_vars": values["envVars"],
        "volumes": values["volumes"],
        "volume_mounts": values["volumeMounts"],
        "run_k8s_config": {RUN_K8S_KEYS[key]: value for key, value in values["runK8sConfig"].items()},
    }


@pytest.fixture
def run_pod(tmp_path: Path) -> dict[str, Any]:
    """The Kubernetes Job dagster-k8s builds for one shard of a family backfill, as a dict."""
    from dagster_k8s.job import get_job_name_from_run_id

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    overrides = {"run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher_config(kubeconfig)}}
    with dg.instance_for_test(overrides=overrides) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, dagster_k8s.K8sRunLauncher)
        run = dg.DagsterRun(
            job_name=FAMILY_JOB,
            run_id="0b0e7f4e-5d7c-4a55-9b0a-2f5c3b1f9a11",
            tags={"dagster/backfill": "abcdefgh", "dagster/asset_partition_range_start": "pin|p001"},
        )
        context = launcher.get_container_context_for_run(run)
        (deployment,) = _section("dagster-user-deployments", "deployments")
        image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
        job = dagster_k8s.construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(job_image=image, run_launcher=launcher),
            args=["dagster", "api", "execute_run", "{}"],
            job_name=get_job_name_from_run_id(run.run_id),
            pod_name=get_job_name_from_run_id(run.run_id),
            component="run_worker",
            user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": FAMILY_JOB, "dagster/run-id": run.run_id},
            env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": FAMILY_JOB}],
        )
    return job.to_dict()


@pytest.mark.parametrize("path", sorted(SCHEMA_FIELDS))
def test_values_use_only_fields_the_chart_schema_allows(path):
    unknown = set(_section(*path)) - SCHEMA_FIELDS[path]
    assert not unknown, f"{DEPLOY / 'values.yaml'}: {'.'.join(path)} has keys the chart refuses: {sorted(unknown)}"


def test_run_pod_requests_a_gpu_on_a_gpu_node(run_pod):
    spec = run_pod["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert spec["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in [
        {k: v for k, v in toleration.items() if v is not None} for toleration in spec["tolerations"]
    ]


def test_run_pod_mounts_the_home_and_runs_the_code_location_image(run_pod):
    spec = run_pod["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "registry.example.org/lab/awb-dagster:0.1.0"
    assert {"name": "awb-home", "mount_path": "/awb/home"}.items() <= next(
        m for m in container["volume_mounts"] if m["name"] == "awb-home"
    ).items()
    volume = next(v for v in spec["volumes"] if v["name"] == "awb-home")
    assert volume["persistent_volume_claim"]["claim_name"] == "awb-home"
    env = {item["name"]: item["value"] for item in container["env"] if item.get("value") is not None}
    assert env["AWB_HOME"] == "/awb/home" and env["AWB_DEVICE"] == "cuda"
    assert env["DAGSTER_RUN_JOB_NAME"] == FAMILY_JOB


def test_run_pod_takes_the_hub_token_from_a_secret(run_pod):
    (container,) = run_pod["spec"]["template"]["spec"]["containers"]
    assert "HF_TOKEN" not in {item["name"] for item in container["env"]}, "the token must not be inlined"
    secrets = [source["secret_ref"]["name"] for source in container["env_from"] if source.get("secret_ref")]
    assert "awb-hf-token" in secrets
    assert "hf_" not in json.dumps(run_pod, default=str)
    inlined = [item["name"] for item in container["env"] if item.get("value") and ("TOKEN" in item["name"] or "PASSWORD" in item["name"])]
    assert not inlined, f"secrets inlined as values: {inlined}"


def test_chart_instance_additions_are_valid_dagster_instance_config():
    additions = _section("additionalInstanceConfig")
    with dg.instance_for_test(overrides=additions) as instance:
        assert isinstance(instance, AwbInstance)
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == additions["concurrency"]["pools"]["default_limit"]
        assert pools.pool_granularity.value == "run", "family runs wait in the queue, not as pods holding a card"


def test_webserver_daemon_and_runs_share_the_code_location_image():
    (deployment,) = _section("dagster-user-deployments", "deployments")
    assert _section("dagsterWebserver", "image") == _section("dagsterDaemon", "image") == deployment["image"]


def test_dockerfile_pins_the_torch_of_setup_script():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    setup = (REPO_ROOT / "scripts" / "setup.sh").read_text()
    for name in ("torch", "torchvision"):
        pinned = setup.split(f'"{name}==')[1].split('"')[0]
        assert f"ARG {name.upper()}_VERSION={pinned}\n" in dockerfile, f"{name} {pinned} (scripts/setup.sh)"
    assert 'pip install ".[k8s]"' in dockerfile
