"""The deployment examples parse and say what they must (issue 15, "Done when" 3): the
Kubernetes Job (no cluster here) and the compose file (run for real in
test_sidecar_docker.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusefs.cli import ENVIRONMENT

yaml = pytest.importorskip("yaml")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FUSEFS_VARIABLES = set(ENVIRONMENT.values())


def k8s_docs() -> list[dict]:
    docs = []
    for f in sorted((EXAMPLES / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_kubernetes_job_with_a_native_fusefs_sidecar():
    docs = k8s_docs()
    kinds = {d["kind"]: d for d in docs}
    assert {"Job", "ConfigMap", "PersistentVolumeClaim"} <= set(kinds), sorted(kinds)
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    pod = kinds["Job"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}

    (sidecar,) = [c for c in pod["initContainers"] if c["name"] == "fusefs"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar
    assert sidecar["args"][:2] == ["mount", "--foreground"]
    env = env_of(sidecar)
    assert {k for k in env if k.startswith("FUSEFS_")} <= FUSEFS_VARIABLES, \
        "a FUSEFS_ variable the CLI does not read"
    mountpoint = env["FUSEFS_MOUNTPOINT"]["value"]

    # the shared emptyDir: Bidirectional in the sidecar, HostToContainer in the trainer
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    shared = [m for m in mounts.values() if m.get("mountPropagation") == "Bidirectional"]
    assert len(shared) == 1 and "emptyDir" in volumes[shared[0]["name"]]
    base = shared[0]["mountPath"].rstrip("/")
    assert mountpoint.startswith(base + "/"), "mount on a subdirectory of the shared dir"
    (trainer,) = pod["containers"]
    tmounts = {m["name"]: m for m in trainer["volumeMounts"]}
    assert tmounts[shared[0]["name"]]["mountPropagation"] == "HostToContainer"
    assert not trainer.get("securityContext", {}).get("privileged")

    # the key from a Secret, the stores from a ConfigMap, S3 credentials from a Secret
    key_dir = Path(env["FUSEFS_KEY_FILE"]["value"]).parent
    (key_mount,) = [m for m in mounts.values() if Path(m["mountPath"]) == key_dir]
    assert "secret" in volumes[key_mount["name"]] and key_mount.get("readOnly")
    stores_dir = Path(env["FUSEFS_STORES_FILE"]["value"]).parent
    (stores_mount,) = [m for m in mounts.values() if Path(m["mountPath"]) == stores_dir]
    cm = volumes[stores_mount["name"]]["configMap"]["name"]
    assert cm == kinds["ConfigMap"]["metadata"]["name"]
    stores_file = Path(env["FUSEFS_STORES_FILE"]["value"]).name
    assert len(kinds["ConfigMap"]["data"][stores_file].split()) == \
        int(env["FUSEFS_DATA_SHARES"]["value"]) + int(env["FUSEFS_PARITY_SHARES"]["value"])
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[var]["valueFrom"]
    vol_dir = Path(env["FUSEFS_VOLUME"]["value"])
    assert any("persistentVolumeClaim" in volumes[m["name"]] and
               vol_dir.is_relative_to(m["mountPath"]) for m in mounts.values()), \
        "the volume directory (metadata) must be on a PersistentVolumeClaim"

    # probes and stop
    assert sidecar["startupProbe"]["exec"]["command"][:3] == ["fusefs", "health", mountpoint]
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"][:2] == ["fusefs", "umount"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    # privileges: stated, and why (Kubernetes allows Bidirectional only when privileged)
    assert sidecar["securityContext"]["privileged"] is True
    text = (EXAMPLES / "kubernetes" / "fusefs-job.yaml").read_text()
    assert "Bidirectional" in text and "privileged" in text and "/dev/fuse" in text
    readme = (EXAMPLES / "kubernetes" / "README.md").read_text()
    assert "## Privileges, and why" in readme


def test_compose_file_names_what_a_sidecar_needs():
    doc = yaml.safe_load((EXAMPLES / "docker-compose.yml").read_text())
    fusefs, trainer = doc["services"]["fusefs"], doc["services"]["trainer"]
    assert fusefs["command"][:2] == ["mount", "--foreground"]
    assert "/dev/fuse" in fusefs["devices"] and "SYS_ADMIN" in fusefs["cap_add"]
    assert not fusefs.get("privileged")
    assert any(v.endswith(":/shared:rshared") for v in fusefs["volumes"])
    assert any(v.endswith(":/shared:rslave") for v in trainer["volumes"])
    assert fusefs["environment"]["FUSEFS_MOUNTPOINT"].startswith("/shared/")
    assert set(k for k in fusefs["environment"] if k.startswith("FUSEFS_")) <= \
        FUSEFS_VARIABLES
    assert fusefs["healthcheck"]["test"][1:3] == ["fusefs", "health"]
    assert trainer["depends_on"]["fusefs"]["condition"] == "service_healthy"
    assert fusefs["environment"]["FUSEFS_KEY_FILE"].startswith("/run/secrets/")
