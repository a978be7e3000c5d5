"""deploy/kubernetes/values.yaml, checked as far as a machine without a cluster can check it.

1. Validation as ``helm install`` does it: the chart's default values merged with ours by Helm's rules,
   then the chart's published values schema (both kept in tests/data/z2jh/, see its README).
2. The spawner settings rendered: the profiles' ``kubespawner_override`` keys are real KubeSpawner traits
   with valid values, and KubeSpawner builds the pod of a GPU student from the values (image, command, ids,
   the per-user and shared volumes, the init containers with ``{username}`` expanded, one GPU).
   The chart maps ``singleuser.*`` to KubeSpawner's traits in its hub configuration; the few keys we set are
   mapped here by hand, next to the chart's names.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "tests" / "data" / "z2jh"
VALUES = ROOT / "deploy" / "kubernetes" / "values.yaml"


def helm_merge(base: dict, override: dict) -> dict:
    """Helm's coalescing of user values over chart defaults: maps merge key by key, lists and scalars are
    replaced, and a ``null`` removes the chart's key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def chart_defaults() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


def _errors(validator, merged) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(merged)]


def test_values_validate_against_the_chart_schema(values, validator, chart_defaults):
    assert _errors(validator, chart_defaults) == [], "the kept chart defaults must themselves validate"
    errors = _errors(validator, helm_merge(chart_defaults, values))
    assert errors == [], "deploy/kubernetes/values.yaml does not validate:\n" + "\n".join(errors)


@pytest.mark.parametrize("path, bad", [
    (("singleuser", "imagee"), {"name": "x"}),                  # a misspelt key
    (("singleuser", "storage", "capacity"), 20),                # a number where the chart wants "20Gi"
    (("cull", "timeout"), "an hour"),                           # a string where the chart wants seconds
])
def test_the_schema_check_catches_mistakes(values, validator, chart_defaults, path, bad):
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = bad
    errors = _errors(validator, helm_merge(chart_defaults, broken))
    assert errors, f"setting {'.'.join(path)} = {bad!r} should fail the chart's schema"


def test_image_and_init_containers_agree(values):
    single = values["singleuser"]
    image = f"{single['image']['name']}:{single['image']['tag']}"
    for container in single["initContainers"]:
        assert container["image"] == image, (
            f"init container {container['name']} runs {container['image']}, the servers run {image}")
    assert single["storage"]["homeMountPath"] == "/workspace", "the release lives in the image's /workspace"
    seed = next(c for c in single["initContainers"] if c["name"] == "seed-workspace")
    assert seed["volumeMounts"][0]["name"] == "volume-{user_server}", (
        "the seed container must mount the per-user volume (the chart's volumeNameTemplate)")


@pytest.fixture(scope="module")
def offline_kubeconfig(tmp_path_factory):
    """A kube config naming a cluster that is never contacted: KubeSpawner loads one when it is built, and
    building a pod manifest calls no API."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "offline",
        "clusters": [{"name": "offline", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "offline", "user": {"token": "unused"}}],
        "contexts": [{"name": "offline", "context": {"cluster": "offline", "user": "offline"}}],
    }), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(path))
        yield path


def _spawner(values, profile_slug: str, username: str):
    kubespawner = pytest.importorskip("kubespawner")
    single = values["singleuser"]
    storage = single["storage"]
    user = SimpleNamespace(name=username, id=7, url=f"/user/{username}/", escaped_name=username)
    spawner = kubespawner.KubeSpawner(_mock=True, user=user)
    # the chart's mapping (zero-to-jupyterhub-k8s jupyterhub/files/hub/jupyterhub_config.py), for the keys we set
    spawner.image = f"{single['image']['name']}:{single['image']['tag']}"
    spawner.cmd = [single["cmd"]]
    spawner.uid, spawner.fs_gid = single["uid"], single["fsGid"]
    spawner.cpu_guarantee, spawner.cpu_limit = single["cpu"]["guarantee"], single["cpu"]["limit"]
    spawner.mem_guarantee, spawner.mem_limit = single["memory"]["guarantee"], single["memory"]["limit"]
    spawner.environment = dict(single["extraEnv"])
    home = {"name": "volume-{user_server}", "persistentVolumeClaim": {"claimName": "claim-{user_server}"}}
    spawner.volumes = [home, *storage["extraVolumes"]]
    spawner.volume_mounts = [{"name": "volume-{user_server}", "mountPath": storage["homeMountPath"]},
                             *storage["extraVolumeMounts"]]
    spawner.init_containers = single["initContainers"]
    profile = next(p for p in single["profileList"] if p["slug"] == profile_slug)
    for key, value in profile.get("kubespawner_override", {}).items():
        setattr(spawner, key, value)
    return spawner


async def _pod(values, profile_slug: str, username: str):
    """The pod KubeSpawner would create (KubeSpawner makes its API client inside the hub's event loop)."""
    return await _spawner(values, profile_slug, username).get_pod_manifest()


def test_profile_overrides_are_kubespawner_traits(values, offline_kubeconfig):
    kubespawner = pytest.importorskip("kubespawner")
    traits = kubespawner.KubeSpawner.class_traits()
    profiles = values["singleuser"]["profileList"]
    assert {p["slug"] for p in profiles} == {"cpu", "gpu"}
    assert sum(bool(p.get("default")) for p in profiles) == 1, "exactly one profile is the default"
    for profile in profiles:
        for key in profile.get("kubespawner_override", {}):
            assert key in traits, f"profile {profile['slug']}: {key!r} is not a KubeSpawner setting"
    asyncio.run(_pod(values, "gpu", "alice"))  # every override value passes its trait's validation


def test_gpu_pod_is_rendered_with_the_students_own_folders(values, offline_kubeconfig):
    pod = asyncio.run(_pod(values, "gpu", "alice"))
    server = pod.spec.containers[0]
    assert server.image == "registry.example.edu/course/diffusion-lib-student:2026.12"
    assert "start-singleuser.sh" in (server.args or []) + (server.command or []), (server.command, server.args)
    assert server.resources.limits["nvidia.com/gpu"] == "1"
    security = pod.spec.security_context
    assert (security.get("fsGroup") if isinstance(security, dict) else security.fs_group) == 1000
    mounts = {m.mount_path: m for m in server.volume_mounts}
    assert mounts["/handin"].sub_path == "alice", "a student mounts only their own hand-in folder"
    assert mounts["/workspace/datasets"].read_only is True
    init = {c.name: c for c in pod.spec.init_containers}
    assert init["handin-folder"].command[-1] == "/handins/alice"
    assert "/seed/.course-seeded" in init["seed-workspace"].command[-1]
    env = {e.name: e.value for e in server.env}
    assert env["COURSE_HANDIN_DIR"] == "/handin"


def test_cpu_pod_asks_for_no_gpu(values, offline_kubeconfig):
    pod = asyncio.run(_pod(values, "cpu", "bob"))
    limits = pod.spec.containers[0].resources.limits or {}
    assert "nvidia.com/gpu" not in limits
    mounts = {m.mount_path: m for m in pod.spec.containers[0].volume_mounts}
    assert mounts["/handin"].sub_path == "bob"
