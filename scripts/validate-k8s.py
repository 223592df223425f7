"""Offline checks of the Kubernetes manifests in k8s/; run by scripts/validate-k8s.sh, which
installs the dependencies (the PyPI package kubernetes-validate, which bundles the Kubernetes
JSON schemas, so nothing is fetched while checking) and renders the kustomization first.

  python validate-k8s.py --k8s-dir k8s --rendered RENDERED.yaml --sidecar-bin BIN -k 1.29.0 ...

1. Every manifest file in k8s/ (listed in kustomization.yaml or not, e.g. hpa-sessions.yaml) and
   every object of the rendered kustomization is validated against the strict schemas of each
   Kubernetes version given: unknown fields, wrong types and missing required fields fail, and
   so does an apiVersion/kind without a schema (kubernetes-validate only warns about those).
2. The rendered objects must fit together: namespaces, selectors against pod labels, Service
   ports against container ports, references to ConfigMaps, Secrets and their keys, the HPA's
   and PDB's targets, and the sidecar in its native form.
3. The sidecar configuration is taken from the rendered ConfigMap that the sidecar container
   actually mounts (following its `-c` argument) and checked with `mcp-sidecar -t -c`, in an
   environment holding exactly the container's env: downward-API values get dummies, Secret
   references get the values of the rendered Secret, mounted Secret files get placeholders.
4. With --helm-chart: `helm lint --strict` of the chart and steps 2-3 on its rendering with the
   default values and with each --helm-values file (Helm v4 as a library, helm-python-sdk).

Exit status: 0 when everything passes, 1 otherwise.
"""

import argparse
import base64
import os
import posixpath
import subprocess
import sys
import tempfile

import yaml
import kubernetes_validate.utils as kv

errors = []


def error(where, message):
    errors.append(f"{where}: {message}")
    print(f"FAIL {where}: {message}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def name_of(obj):
    return f"{obj.get('kind', '?')}/{obj.get('metadata', {}).get('name', '?')}"


# Kinds of CRDs the Helm chart may render; kubernetes-validate has no schemas for them, so only
# the fields the chart relies on are checked.
CRD_FIELDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): ("spec.selector.matchLabels", "spec.endpoints")}


def validate_schema(obj, where, versions):
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        error(where, "not a Kubernetes object (apiVersion and kind are required)")
        return
    crd = CRD_FIELDS.get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        for path in crd:
            node = obj
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if not node:
                error(f"{where} {name_of(obj)}", f"{path} is missing or empty")
        return
    for version in versions:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(top level)"
            error(f"{where} {name_of(obj)} [k8s {version}]", f"{path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            error(f"{where} {name_of(obj)}", e.message)
        except kv.VersionNotSupportedError:
            error(where, f"kubernetes-validate has no schemas for Kubernetes {version}")


def pod_spec(obj):
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def all_containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


class _AnyKeys:
    """The keys of a Secret made elsewhere: every key may be there."""

    def __contains__(self, key):
        return True


ANY_KEYS = _AnyKeys()


def check_references(objects, namespace="mcp", external_secrets=()):
    """Cross-object checks a schema cannot express. Secrets named in `external_secrets` are made
    outside the rendered output (a chart's existingSecret values)."""
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    workloads = [o for o in objects if pod_spec(o) is not None]

    for obj in objects:
        ns = obj["metadata"].get("namespace")
        if obj["kind"] != "Namespace" and ns != namespace:
            error(name_of(obj), f"namespace is {ns!r}, expected {namespace!r}")

    def secret_keys(name):
        if name in external_secrets:
            return ANY_KEYS
        s = by_kind.get("Secret", {}).get(name)
        return None if s is None else set(s.get("data", {})) | set(s.get("stringData", {}))

    def configmap_keys(name):
        c = by_kind.get("ConfigMap", {}).get(name)
        return None if c is None else set(c.get("data", {})) | set(c.get("binaryData", {}))

    for w in workloads:
        where = name_of(w)
        spec = pod_spec(w)
        template_labels = w["spec"]["template"]["metadata"].get("labels", {})
        selector = w["spec"].get("selector", {}).get("matchLabels", {})
        if not selector or not matches(selector, template_labels):
            error(where, f"selector {selector} does not match the pod template labels")
        for c in all_containers(spec):
            cwhere = f"{where} container {c['name']}"
            declared = {p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    port = c.get(probe, {}).get(kind, {}).get("port")
                    if isinstance(port, int) and port not in declared:
                        error(cwhere, f"{probe} uses port {port}, which the container does not declare")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref and not ref["secretKeyRef"].get("optional"):
                    r = ref["secretKeyRef"]
                    keys = secret_keys(r["name"])
                    if keys is None or r["key"] not in keys:
                        error(cwhere, f"env {env['name']}: Secret {r['name']} has no key {r['key']}")
                if "configMapKeyRef" in ref and not ref["configMapKeyRef"].get("optional"):
                    r = ref["configMapKeyRef"]
                    keys = configmap_keys(r["name"])
                    if keys is None or r["key"] not in keys:
                        error(cwhere, f"env {env['name']}: ConfigMap {r['name']} has no key {r['key']}")
            volumes = {v["name"] for v in spec.get("volumes", [])}
            # a StatefulSet's claim templates are volumes of its pods too
            volumes |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    error(cwhere, f"mounts volume {m['name']}, which the pod does not define")
        for v in spec.get("volumes", []):
            if "configMap" in v and configmap_keys(v["configMap"]["name"]) is None:
                error(where, f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
            if "secret" in v and secret_keys(v["secret"]["secretName"]) is None:
                error(where, f"volume {v['name']}: no Secret {v['secret']['secretName']}")

    for svc in by_kind.get("Service", {}).values():
        where = name_of(svc)
        selected = [w for w in workloads
                    if matches(svc["spec"].get("selector", {}), w["spec"]["template"]["metadata"].get("labels", {}))]
        if not selected:
            error(where, f"selector {svc['spec'].get('selector')} matches no pod template")
        for w in selected:
            spec = pod_spec(w)
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                if isinstance(target, int):
                    if not any(target == cp["containerPort"] for c in all_containers(spec) for cp in c.get("ports", [])):
                        error(where, f"targetPort {target} is not a container port of {name_of(w)}")
                else:
                    # Named ports of native sidecars resolve only from Kubernetes 1.32 on.
                    if not any(target == cp.get("name") for c in spec.get("containers", []) for cp in c.get("ports", [])):
                        error(where, f"targetPort {target!r} is not a named port of a regular container of {name_of(w)}")

    for pdb in by_kind.get("PodDisruptionBudget", {}).values():
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        if not any(matches(sel, w["spec"]["template"]["metadata"].get("labels", {})) for w in workloads):
            error(name_of(pdb), f"selector {sel} matches no pod template")

    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["name"] not in by_kind.get(ref["kind"], {}):
            error(name_of(hpa), f"scaleTargetRef {ref['kind']}/{ref['name']} does not exist")
        target = by_kind.get(ref["kind"], {}).get(ref["name"])
        if target is not None and "replicas" in target["spec"]:
            error(name_of(target), "sets spec.replicas although an HPA manages it (every apply would reset the count)")


def sidecar_container(objects):
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for c in spec.get("initContainers", []):
            if c["name"] == "mcp-sidecar":
                return obj, spec, c
    return None, None, None


def check_sidecar(objects, sidecar_bin):
    workload, spec, c = sidecar_container(objects)
    if c is None:
        error("rendered output", "no initContainer named mcp-sidecar (the native sidecar form)")
        return
    where = f"{name_of(workload)} container mcp-sidecar"
    if c.get("restartPolicy") != "Always":
        error(where, "must have restartPolicy: Always (native sidecar)")

    # Which file does the sidecar read, and which ConfigMap key backs it?
    args = c.get("args", [])
    if "-c" not in args or args.index("-c") + 1 >= len(args):
        error(where, f"args {args} do not name a configuration file with -c")
        return
    conf_path = args[args.index("-c") + 1]
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == posixpath.dirname(conf_path)), None)
    if mount is None:
        error(where, f"no volume is mounted at {posixpath.dirname(conf_path)} (for {conf_path})")
        return
    volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), {})
    cm_name = volume.get("configMap", {}).get("name")
    cm = next((o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name), None)
    key = posixpath.basename(conf_path)
    if cm is None or key not in cm.get("data", {}):
        error(where, f"{conf_path} should come from ConfigMap {cm_name} key {key}, which does not exist")
        return
    text = cm["data"][key]

    # The container's environment, as the kubelet would build it (no inherited variables).
    secrets = {}
    for o in objects:
        if o["kind"] == "Secret":
            values = {k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()}
            values.update(o.get("stringData", {}))
            secrets[o["metadata"]["name"]] = values
    dummies = {"status.podIP": "10.0.0.10", "metadata.name": "mcp-server-0", "metadata.namespace": "mcp"}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = dummies.get(e["valueFrom"]["fieldRef"]["fieldPath"], "dummy")
        elif "secretKeyRef" in e.get("valueFrom", {}):
            r = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets.get(r["name"], {}).get(r["key"], "dummy-value-0123456789")
        else:
            env[e["name"]] = "dummy-value-0123456789"

    with tempfile.TemporaryDirectory() as tmp:
        # Secret volumes the sidecar mounts (the Redis password, TLS files) become files with
        # placeholder contents, and the configuration names them there: -t checks that they exist.
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            secret = volumes.get(m["name"], {}).get("secret")
            if secret is None:
                continue
            local = os.path.join(tmp, m["name"])
            os.makedirs(local)
            for item in secret.get("items", []) or [{"path": k} for k in ("ca.crt", "tls.crt", "tls.key")]:
                with open(os.path.join(local, item["path"]), "w") as f:
                    f.write("placeholder\n")
            text = text.replace(m["mountPath"].rstrip("/") + "/", local + "/")
        path = os.path.join(tmp, key)
        with open(path, "w") as f:
            f.write(text)
        run = subprocess.run([sidecar_bin, "-t", "-c", path], env=env, capture_output=True, text=True)
        out = (run.stdout + run.stderr).strip().replace(path, f"ConfigMap {cm_name}:{key}")
        if run.returncode != 0:
            error(f"ConfigMap {cm_name}", f"`mcp-sidecar -t` exit {run.returncode}: {out}")
        else:
            print(f"ok   {out} (env: {', '.join(sorted(k for k in env if k != 'PATH'))})")


def check_rendered(objects, what, versions, sidecar_bin, namespace="mcp", external_secrets=()):
    """Schemas, cross-references and the sidecar configuration of one rendered output."""
    before = len(errors)
    for obj in objects:
        validate_schema(obj, what, versions)
    if len(errors) == before:
        print(f"ok   {what}: {len(objects)} objects valid against Kubernetes {', '.join(versions)}")
    before = len(errors)
    check_references(objects, namespace, external_secrets)
    if len(errors) == before:
        print(f"ok   {what}: names, selectors, ports and references fit together")
    check_sidecar(objects, sidecar_bin)


def check_chart(chart, values_files, versions, sidecar_bin):
    """`helm lint --strict` and `helm template` of the chart, offline (helm-python-sdk: Helm v4
    as a library), with its default values and with each values file; every rendering is then
    checked like the kustomization."""
    from helm_python.chart import Chart, lint

    for values_file in [None] + values_files:
        label = f"chart {chart} with {values_file or 'default values'}"
        values = None
        if values_file:
            with open(values_file) as f:
                values = yaml.safe_load(f)
        for version in versions:
            report = lint(chart, values, strict=True, namespace="mcp", kube_version=f"v{version}")
            problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            for m in problems:
                error(f"{label} lint [k8s {version}]", f"{m.get('path')}: {m.get('error')}")
            for e in report.get("errors", []):
                error(f"{label} lint [k8s {version}]", e)
            if not problems and not report.get("errors"):
                print(f"ok   helm lint --strict {label} [k8s {version}]")
        with Chart.load(chart) as c:
            try:
                c.validate_schema(values)
                rendered = c.render(values, name="mcp-server", namespace="mcp", is_install=True)
            except Exception as e:  # the library's errors carry Helm's message
                error(label, f"render: {e}")
                continue
        objects = []
        for name, text in sorted(rendered.items()):
            if name.endswith(".yaml"):
                objects += [d for d in yaml.safe_load_all(text) if d is not None]
        # Secrets the values name as existing ones come from outside the chart
        external = set()
        redis = (values or {}).get("redis", {})
        for part in ("password", "tls"):
            if redis.get(part, {}).get("existingSecret"):
                external.add(redis[part]["existingSecret"])
        if (values or {}).get("secrets", {}).get("existingSecret"):
            external.add(values["secrets"]["existingSecret"])
        check_rendered(objects, f"rendered {label}", versions, sidecar_bin, "mcp", external)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-dir", required=True)
    ap.add_argument("--rendered", required=True, help="output of `kustomize build`")
    ap.add_argument("--sidecar-bin", required=True)
    ap.add_argument("-k", "--kubernetes-version", action="append", required=True)
    ap.add_argument("--helm-chart", help="a Helm chart directory to lint, render and check too")
    ap.add_argument("--helm-values", action="append", default=[],
                    help="values files to render the chart with, besides its defaults")
    args = ap.parse_args()
    versions = args.kubernetes_version

    # 1. Each manifest file on its own (kustomization.yaml is kustomize's, config/ holds the
    #    sidecar's own configuration, checked in step 3).
    files = sorted(f for f in os.listdir(args.k8s_dir)
                   if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    with open(os.path.join(args.k8s_dir, "kustomization.yaml")) as f:
        listed = set(yaml.safe_load(f).get("resources", []))
    for f in files:
        path = os.path.join(args.k8s_dir, f)
        try:
            docs = load_docs(path)
        except yaml.YAMLError as e:
            error(path, f"YAML: {e}")
            continue
        if not docs:
            error(path, "no objects")
        before = len(errors)
        for d in docs:
            validate_schema(d, path, versions)
        if len(errors) == before:
            note = "" if f in listed else " (not in kustomization.yaml: applied separately)"
            print(f"ok   {path}: {', '.join(name_of(d) for d in docs)}{note}")

    # 2. The rendered kustomization: schemas again (generated objects, transformed names), then
    #    the cross-references; 3. the sidecar configuration in the ConfigMap.
    check_rendered(load_docs(args.rendered), "rendered kustomization", versions, args.sidecar_bin)

    # 4. The Helm chart, rendered with each set of values, checked the same way.
    if args.helm_chart:
        check_chart(args.helm_chart, args.helm_values, versions, args.sidecar_bin)

    if errors:
        print(f"\n{len(errors)} problem(s) in the Kubernetes manifests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
