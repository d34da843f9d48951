"""Checks of the Kubernetes manifests that a schema cannot make (scripts/k8s-check runs it).

Every PodDisruptionBudget must allow an eviction at the fewest replicas its workload can have
(the HPA's minReplicas, else the workload's replicas), so a node drain is never blocked. Every
container must request and limit CPU and memory, have readiness and liveness probes, run as
non-root, and name an image by a tag other than `latest`. The configuration file a ConfigMap
mounts must be the one in config/; the alert rules and dashboards must parse and use only
metrics the code exports; the image of the StatefulSet must be the one the Dockerfile builds.
"""

import json
import os
import re
import sys

import yaml

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# ConfigMap key -> the file in the repository it must equal.
MOUNTED = {("convene-config", "convene.toml"): "config/kubernetes.toml"}
METRIC = re.compile(r"\b((?:convene|http|event)_[a-z0-9_]+)")
SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metrics():
    """Every metric name written as a string literal in the Rust sources."""
    names = set()
    for top in ("src", "cluster/src", "actors/src"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".rs"):
                    with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                        names.update(re.findall(r'"((?:convene|http|event)_[a-z0-9_]+)"', f.read()))
    return names


def check_metrics(problems, where, exprs, exported):
    for expr in exprs:
        for name in METRIC.findall(expr):
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
            if base not in exported:
                fail(problems, where, f"uses {name}, which Convene does not export")


def check_config_maps(problems, docs):
    exported = exported_metrics()
    for doc in (d for d in docs if d.get("kind") == "ConfigMap"):
        name = doc["metadata"]["name"]
        for key, value in (doc.get("data") or {}).items():
            where = f"ConfigMap/{name} {key}"
            if (name, key) in MOUNTED:
                with open(os.path.join(ROOT, MOUNTED[(name, key)]), encoding="utf-8") as f:
                    if f.read() != value:
                        fail(problems, where, f"differs from {MOUNTED[(name, key)]}")
            if key.endswith(".rules.yaml"):
                rules = yaml.safe_load(value)
                exprs = []
                for group in rules.get("groups") or []:
                    for rule in group.get("rules") or []:
                        for field in ("alert", "expr", "for"):
                            if field not in rule:
                                fail(problems, where, f"a rule has no {field}")
                        if "severity" not in (rule.get("labels") or {}):
                            fail(problems, where, f"{rule.get('alert')} has no severity")
                        exprs.append(rule.get("expr", ""))
                if not exprs:
                    fail(problems, where, "holds no rule")
                check_metrics(problems, where, exprs, exported)
            if key.endswith(".json"):
                try:
                    dashboard = json.loads(value)
                except ValueError as e:
                    fail(problems, where, f"is not JSON: {e}")
                    continue
                exprs = [t.get("expr", "") for p in dashboard.get("panels") or [] for t in p.get("targets") or []]
                if not exprs:
                    fail(problems, where, "has no queries")
                check_metrics(problems, where, exprs, exported)


def check_image(problems, docs):
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        built = re.search(r"docker build -t (\S+) \.", f.read())
    if not built:
        fail(problems, "Dockerfile", "does not say which image it builds (docker build -t IMAGE .)")
        return
    for doc in (d for d in docs if d.get("kind") == "StatefulSet"):
        for c in pods(doc).get("containers") or []:
            if c.get("image") != built.group(1):
                fail(problems, f"StatefulSet/{doc['metadata']['name']}", f"runs {c.get('image')}, the Dockerfile builds {built.group(1)}")


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
    check_config_maps(problems, docs)
    check_image(problems, docs)
    for p in problems:
        print(f"k8s policy: {p}", file=sys.stderr)
    print(f"k8s policy: {len(docs)} resources, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
