"""Checks of the Kubernetes manifests that a schema cannot make (scripts/k8s-check runs it).

Every PodDisruptionBudget must allow an eviction at the fewest replicas its workload can have
(the HPA's minReplicas, else the workload's replicas), so a node drain is never blocked. Every
container must request and limit CPU and memory, have readiness and liveness probes, run as
non-root, and name an image by a tag other than `latest`.
"""

import sys

import yaml


def fail(problems, where, what):
    problems.append(f"{where}: {what}")


def pods(doc):
    """The pod template of a workload, if the document is one."""
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return (spec.get("template") or {}).get("spec") or {}
    if kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        return (job.get("template") or {}).get("spec") or {}
    return None


def labels_match(selector, labels):
    wanted = (selector or {}).get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_containers(problems, doc, pod):
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    pod_non_root = (pod.get("securityContext") or {}).get("runAsNonRoot") is True
    for c in pod.get("containers") or []:
        where = f"{name} container {c.get('name')}"
        resources = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (resources.get(part) or {}):
                    fail(problems, where, f"no {r} in resources.{part}")
        if doc["kind"] not in ("Job", "CronJob"):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    fail(problems, where, f"no {probe}")
        if not (pod_non_root or (c.get("securityContext") or {}).get("runAsNonRoot") is True):
            fail(problems, where, "may run as root (set runAsNonRoot)")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            fail(problems, where, f"image {image!r} has no fixed tag")


def check(docs):
    problems = []
    workloads = [d for d in docs if pods(d) is not None]
    scalers = [d for d in docs if d.get("kind") == "HorizontalPodAutoscaler"]
    for doc in workloads:
        check_containers(problems, doc, pods(doc))
    for pdb in (d for d in docs if d.get("kind") == "PodDisruptionBudget"):
        where = f"PodDisruptionBudget/{pdb['metadata']['name']}"
        spec = pdb.get("spec") or {}
        targets = [
            w for w in workloads
            if labels_match(spec.get("selector"), ((w["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {})
        ]
        if not targets:
            fail(problems, where, "selects no workload in these manifests")
            continue
        for w in targets:
            fewest = w["spec"].get("replicas", 1)
            for hpa in scalers:
                ref = hpa["spec"]["scaleTargetRef"]
                if ref.get("kind") == w["kind"] and ref.get("name") == w["metadata"]["name"]:
                    fewest = min(fewest, hpa["spec"].get("minReplicas", 1))
            if "maxUnavailable" in spec:
                allowed = spec["maxUnavailable"]
                if isinstance(allowed, str):
                    allowed = int(fewest * int(allowed.rstrip("%")) / 100)
            else:
                need = spec.get("minAvailable", 0)
                if isinstance(need, str):
                    need = -(-fewest * int(need.rstrip("%")) // 100)
                allowed = fewest - need
            if allowed < 1:
                fail(problems, where, f"allows no eviction at {fewest} replicas of {w['kind']}/{w['metadata']['name']}")
    return problems


def main(paths):
    docs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    problems = check(docs)
    for p in problems:
        print(f"k8s policy: {p}", file=sys.stderr)
    print(f"k8s policy: {len(docs)} resources, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
