#!/usr/bin/env python3
"""Turns the DaemonSet's pod template into a Pod that `podman kube play`
(Debian 12's podman 4.3) runs on one machine, so the podman test runs the
shipped manifests, not a copy that can drift.

The Pod keeps the template's containers (init and regular), commands,
arguments, environment, securityContext (capabilities, user, read-only
root), volume mounts, probes, hostNetwork, annotations and labels as they
are. Only these change, each because podman 4.3 cannot express it on a
single machine or the test must not touch the real host:

- kind DaemonSet -> Pod (podman kube play has no DaemonSet kind);
  the selector, update strategy, nodeSelector, affinity, tolerations and
  priorityClassName have no meaning without a scheduler (kept in the
  spec, podman ignores them);
- restartPolicy Always (a DaemonSet's only choice, the default) ->
  OnFailure: podman 4.3 gives init containers the pod's restart policy,
  restarts the init container after it succeeded and then fails to remove
  the "once" init container because it is running again;
- every container's image -> --image (the locally built image);
- containers' `ports` are dropped: podman 4.3 turns containerPort into a
  port mapping and refuses it with hostNetwork ("PortMappings can only be
  used with Bridge or slirp4netns networking"); with hostNetwork it is
  documentation in Kubernetes too (sluiced's metrics listen on the node);
- hostPath paths are moved under --host-root (the test's fake host),
  except character devices (/dev/net/tun) and /sys/kernel/security;
- the HugePages emptyDir -> a hostPath of --hugepages (a hugetlbfs mount:
  podman 4.3 makes a plain directory of `emptyDir: {medium: HugePages}`);
- the ConfigMap's sluiced.ini gets the --ini SECTION.KEY=VALUE overrides
  (file_prefix, hugepages, mbufs: the test's DPDK resources).

Writes OUT/pod.yaml, OUT/configmap.yaml (pass it to kube play with
--configmap) and OUT/probes.json (container, kind, exec command), the
probes the test runs with `podman exec`: podman 4.3 turns exec probes
into healthchecks that only systemd timers run.

Usage: pod-from-daemonset.py --daemonset deploy/kubernetes/sluice-daemonset.yaml
         --config deploy/kubernetes/sluice-config.yaml --image IMG
         --host-root DIR --hugepages DIR [--ini datapath.file_prefix=x ...] OUT
"""
import argparse
import copy
import json
import os
import sys

import yaml

KEEP_HOST_PATHS = ("/dev/net/tun", "/sys/kernel/security")


def load(path, kind):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc and doc.get("kind") == kind:
                return doc
    sys.exit(f"{path}: no {kind} in it")


def patch_ini(text, overrides):
    """Sets SECTION.KEY=VALUE in an ini text (the key must exist)."""
    lines = text.splitlines()
    for item in overrides:
        name, value = item.split("=", 1)
        section, key = name.split(".", 1)
        cur, done = None, False
        for i, line in enumerate(lines):
            s = line.strip()
            if s.startswith("[") and s.endswith("]"):
                cur = s[1:-1].strip()
            elif cur == section and "=" in s and s.split("=", 1)[0].strip() == key and not s.startswith(";"):
                lines[i] = f"{key} = {value}"
                done = True
        if not done:
            sys.exit(f"--ini {item}: no key {key} in [{section}] of sluiced.ini")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--daemonset", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--host-root", required=True)
    p.add_argument("--hugepages", required=True)
    p.add_argument("--ini", action="append", default=[])
    p.add_argument("out")
    a = p.parse_args()

    ds = load(a.daemonset, "DaemonSet")
    tmpl = ds["spec"]["template"]
    spec = copy.deepcopy(tmpl["spec"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": ds["metadata"]["name"],
            "labels": dict(tmpl["metadata"].get("labels", {})),
            "annotations": dict(tmpl["metadata"].get("annotations", {})),
        },
        "spec": spec,
    }
    spec["restartPolicy"] = "OnFailure"
    for c in spec.get("initContainers", []) + spec["containers"]:
        c["image"] = a.image
        c.pop("ports", None)
    for v in spec.get("volumes", []):
        hp = v.get("hostPath")
        if hp and hp["path"] not in KEEP_HOST_PATHS:
            hp["path"] = os.path.join(a.host_root, hp["path"].lstrip("/"))
        ed = v.get("emptyDir")
        if ed is not None and ed.get("medium") == "HugePages":
            del v["emptyDir"]
            v["hostPath"] = {"path": a.hugepages, "type": "Directory"}

    cm = load(a.config, "ConfigMap")
    cm["data"]["sluiced.ini"] = patch_ini(cm["data"]["sluiced.ini"], a.ini)

    probes = []
    for c in spec["containers"]:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            pr = c.get(kind)
            if pr and "exec" in pr:
                probes.append({"container": c["name"], "kind": kind, "command": pr["exec"]["command"]})

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "pod.yaml"), "w") as f:
        yaml.safe_dump(pod, f, sort_keys=False)
    with open(os.path.join(a.out, "configmap.yaml"), "w") as f:
        yaml.safe_dump(cm, f, sort_keys=False)
    with open(os.path.join(a.out, "probes.json"), "w") as f:
        json.dump(probes, f, indent=1)


if __name__ == "__main__":
    main()
