"""Static checks of the cluster files: every YAML under cluster/ and jobs/ loads, and the fields
that decide whether a deployment works are present and point at real things (entrypoint scripts
in this repo that accept their arguments, valid merge configs, the S3 service account, token
auth, IAM on every launcher node type, the RayCronJob and CronJob fallback shapes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from raymerge.config import load_config

REPO = Path(__file__).resolve().parents[2]
YAML_FILES = sorted(
    p for d in ("cluster", "jobs") for p in (REPO / d).rglob("*") if p.suffix in (".yaml", ".yml")
)
IMAGE_DIR = "/opt/raymerge/"  # where cluster/Dockerfile puts the checkout


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in YAML_FILES if "kuberay" in p.parts for d in docs(p)]


def by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_docs() if d["kind"] == kind]


def embedded_rayjobs() -> list[tuple[Path, dict]]:
    """RayJob manifests kept inside ConfigMaps (the CronJob fallback creates them)."""
    out = []
    for p, cm in by_kind("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                d = yaml.safe_load(text)
                if isinstance(d, dict) and d.get("kind") == "RayJob":
                    out.append((p, d))
    return out


def rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec: RayJobs, RayCronJob jobTemplates, RayJobs embedded in ConfigMaps."""
    specs = [(f"{p.name}:RayJob", d["spec"]) for p, d in by_kind("RayJob") + embedded_rayjobs()]
    specs += [(f"{p.name}:RayCronJob", d["spec"]["jobTemplate"]) for p, d in by_kind("RayCronJob")]
    return specs


def cluster_specs() -> list[tuple[str, dict]]:
    out = [(f"{p.name}:RayCluster", d["spec"]) for p, d in by_kind("RayCluster")]
    return out + [(n, s["rayClusterSpec"]) for n, s in rayjob_specs()]


def pod_specs(cluster: dict) -> list[dict]:
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [g["template"]["spec"] for g in groups]


def test_every_yaml_loads_and_k8s_objects_are_typed():
    assert YAML_FILES, "no YAML under cluster/ or jobs/"
    names = {p.relative_to(REPO).as_posix() for p in YAML_FILES}
    assert {
        "jobs/runtime_env.yaml",
        "cluster/aws-gpu.yaml",
        "cluster/kuberay/raycluster.yaml",
        "cluster/kuberay/rayjob-merge.yaml",
        "cluster/kuberay/raycronjob-nightly.yaml",
        "cluster/kuberay/cronjob-nightly-fallback.yaml",
    } <= names
    for p in YAML_FILES:
        assert docs(p), p
    for p, d in k8s_docs():
        assert d.get("apiVersion") and d.get("kind"), (p, d)
        meta = d.get("metadata") or {}
        assert meta.get("name") or meta.get("generateName"), (p, d["kind"])
        if d["apiVersion"].startswith("ray.io/"):
            assert d["apiVersion"] == "ray.io/v1", p


def test_ray_clusters_use_the_image_token_auth_and_the_s3_service_account():
    (sa,) = [d for _, d in by_kind("ServiceAccount") if d["metadata"]["name"] == "raymerge"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    ray_version = re.search(r"^FROM rayproject/ray:([\d.]+)", dockerfile, re.M).group(1)
    assert "COPY" in dockerfile and " jobs " in dockerfile and "pip install" in dockerfile
    specs = cluster_specs()
    assert len(specs) >= 4  # RayCluster, RayJob, RayCronJob, the fallback's RayJob
    for name, spec in specs:
        assert spec["rayVersion"] == ray_version, name
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["workerGroupSpecs"], name
        for pod in pod_specs(spec):
            assert pod["serviceAccountName"] == "raymerge", name  # workers need S3 too
            for c in pod["containers"]:
                assert c["image"] and ":" in c["image"], name
        worker = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"], name


def config_maps() -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in by_kind("ConfigMap")}


def test_entrypoints_name_repo_scripts_that_accept_their_arguments():
    from jobs import nightly
    from jobs.common import parse_run_args

    cms = config_maps()
    specs = rayjob_specs()
    assert {n.split(":")[1] for n, _ in specs} == {"RayJob", "RayCronJob"}
    seen = set()
    for name, spec in specs:
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "python", name
        assert argv[1].startswith(IMAGE_DIR), name
        script = argv[1][len(IMAGE_DIR) :]
        assert (REPO / script).is_file(), (name, script)
        seen.add(script)
        if script == "jobs/merge.py":
            args = parse_run_args(argv[2:], "merge")
            assert args.out.startswith("s3://"), name
        else:
            assert script == "jobs/nightly.py", name
            ns, args = nightly.parse_args(argv[2:])
            assert ns.output_root.startswith("s3://") and ns.keep >= 1, name
        # the config is a key of a ConfigMap mounted on the head (where the driver runs)
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in head["volumes"]}
        folder, key = args.config.rsplit("/", 1)
        cm = cms[volumes[mounts[folder]]["configMap"]["name"]]
        load_config(yaml.safe_load(cm["data"][key]))  # a valid raymerge config
        assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["PYTHONUNBUFFERED"] == "1"
        assert spec["shutdownAfterJobFinishes"] is True, name
    assert seen == {"jobs/merge.py", "jobs/nightly.py"}


CRON = re.compile(r"^\S+ \S+ \S+ \S+ \S+$")


def test_raycronjob_shape():
    ((_, cron),) = by_kind("RayCronJob")
    spec = cron["spec"]
    assert CRON.match(spec["schedule"])
    assert spec["jobTemplate"]["entrypoint"] and spec["jobTemplate"]["rayClusterSpec"]
    assert "spec" not in spec["jobTemplate"]  # jobTemplate *is* a RayJob spec
    assert isinstance(spec["suspend"], bool) and spec["timeZone"]
    assert set(spec) <= {"schedule", "jobTemplate", "timeZone", "suspend"}


def test_cronjob_fallback_creates_a_rayjob_with_rbac():
    path = REPO / "cluster" / "kuberay" / "cronjob-nightly-fallback.yaml"
    objs = {(d["kind"], d["metadata"]["name"]): d for d in docs(path)}
    (cron,) = [d for (k, _), d in objs.items() if k == "CronJob"]
    assert cron["apiVersion"] == "batch/v1" and CRON.match(cron["spec"]["schedule"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] and "kubectl create -f /manifests/rayjob.yaml" in " ".join(c["args"])
    sa = pod["serviceAccountName"]
    assert ("ServiceAccount", sa) in objs
    (binding,) = [d for (k, _), d in objs.items() if k == "RoleBinding"]
    assert {"kind": "ServiceAccount", "name": sa} in binding["subjects"]
    role = objs[("Role", binding["roleRef"]["name"])]
    assert any(
        "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
        for r in role["rules"]
    )
    vol = {v["name"]: v for v in pod["volumes"]}[c["volumeMounts"][0]["name"]]
    cm = objs[("ConfigMap", vol["configMap"]["name"])]
    assert yaml.safe_load(cm["data"]["rayjob.yaml"])["kind"] == "RayJob"


def test_launcher_yaml_gives_every_node_type_s3_access_and_installs_raymerge():
    (launcher,) = docs(REPO / "cluster" / "aws-gpu.yaml")
    assert launcher["provider"]["type"] == "aws" and launcher["cluster_name"]
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    workers = [n for n in types if n != launcher["head_node_type"]]
    assert workers
    for name, t in types.items():
        nc = t["node_config"]
        assert nc["InstanceType"], name
        assert nc["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    assert any(re.match(r"^(g|p)\d", types[w]["node_config"]["InstanceType"]) for w in workers)
    setup = " ".join(launcher["setup_commands"])
    assert "pip install" in setup and "raymerge" in setup
    src = launcher["file_mounts"]["/home/ubuntu/raymerge"]
    assert (REPO / src / "jobs" / "merge.py").is_file()
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in s for s in starts if "ray start" in s)


def test_runtime_env_keeps_the_upload_small():
    env = docs(REPO / "jobs" / "runtime_env.yaml")[0]
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "config"}
    assert env["working_dir"] == "."
    assert {".git/", ".venv/"} <= set(env["excludes"])
    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    if not hasattr(packaging, "_zip_files"):
        pytest.skip("Ray's packaging internals changed")
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "pkg.zip")
        packaging._zip_files(str(REPO), env["excludes"], str(out), include_gitignore=True)
        names = zipfile.ZipFile(out).namelist()
        size = out.stat().st_size
    assert "jobs/merge.py" in names and "jobs/nightly.py" in names
    assert any(n.startswith("raymerge/") for n in names)
    assert not any(n.startswith((".venv/", ".git/")) for n in names)
    assert size < 2_000_000, f"working dir package is {size} bytes"
