"""Checks the compose files and the Kubernetes manifests under deploy/.

    python3 scripts/check_deploy.py FLOWGATE_BINARY

Run by scripts/check-deploy.sh, with kubernetes-validate and PyYAML
installed. The compose files have already passed `docker-compose config`
(the compose specification's schema); this checks what that schema cannot
know: Redis keeps what it acknowledged and refuses writes when full,
every flowgate process has the shared signing key, a health check of its
own and more stop time than server.shutdown_grace. Every Kubernetes object
is validated against the Kubernetes schemas of the oldest and newest
supported versions, strictly (unknown fields fail), and the same facts are
checked there, plus probes, disruption budgets and resources. Finally every
flowgate process's environment (compose, Kubernetes, the systemd unit's
Environment= lines) is handed to the binary's own `check` with the config
file it runs with, so a misspelt FLOWGATE_* variable or a bad value fails
here, not at deploy time.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def seconds(text):
    """'45s', '1m30s', 45 -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


CONTAINER_CONFIG_FILE = DEPLOY / "container/config.toml"
CONTAINER_CONFIG = tomllib.loads(CONTAINER_CONFIG_FILE.read_text())
# FLOWGATE_* variables that are not FLOWGATE_<SECTION>__<KEY> config keys.
OTHER_VARIABLES = {"FLOWGATE_SIGNING_KEY", "FLOWGATE_LOG_FORMAT"}
SHUTDOWN_GRACE = seconds(CONTAINER_CONFIG["server"]["shutdown_grace"])


def is_flowgate(image):
    return image is not None and "flowgate" in image.split("/")[-1]


def check_compose(path, environments):
    compose = yaml.safe_load(path.read_text())
    where = path.relative_to(ROOT)
    services = compose["services"]
    flowgate = {name: s for name, s in services.items() if is_flowgate(s.get("image"))}
    if not flowgate:
        problem(where, "no flowgate service")
    for name, service in flowgate.items():
        at = f"{where}: services.{name}"
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        environments.append((at, env, CONTAINER_CONFIG_FILE))
        test = (service.get("healthcheck") or {}).get("test") or []
        if "healthcheck" not in test:
            problem(at, f"its health check does not run `flowgate healthcheck`: {test}")
        grace = seconds(service.get("stop_grace_period", "10s"))
        if grace <= SHUTDOWN_GRACE:
            problem(at, f"stop_grace_period {grace}s is not more than shutdown_grace {SHUTDOWN_GRACE}s")
        if service.get("stop_signal", "SIGTERM") != "SIGTERM":
            problem(at, "stop_signal is not SIGTERM")
        if "flowgate_signing_key" not in (service.get("secrets") or []):
            problem(at, "the signing key secret is not mounted")
        if env.get("FLOWGATE_AUTH__GENERATE_MISSING_KEY") != "false":
            problem(at, "a process could make a key of its own: set FLOWGATE_AUTH__GENERATE_MISSING_KEY=false")
        if env.get("FLOWGATE_STORAGE__BACKEND", "embedded") == "embedded":
            volumes = [v.split(":")[1] for v in service.get("volumes", [])]
            if "/var/lib/flowgate" not in volumes:
                problem(at, "the embedded database is not on a volume at /var/lib/flowgate")
    if "flowgate_signing_key" not in (compose.get("secrets") or {}):
        problem(where, "no flowgate_signing_key secret")
    redis = services.get("redis")
    uses_redis = any(
        env.get("FLOWGATE_STORAGE__BACKEND") == "redis" for at, env, _ in environments if at.startswith(str(where))
    )
    if uses_redis:
        if redis is None:
            problem(where, "flowgate uses Redis but there is no redis service")
        else:
            check_redis_args(f"{where}: services.redis", redis.get("command") or [])
        gateways = [s for s in flowgate.values() if (s.get("command") or ["serve"])[0] == "serve"]
        workers = [s for s in flowgate.values() if (s.get("command") or [""])[0] == "worker"]
        if len(gateways) < 2 or not workers:
            problem(where, f"{len(gateways)} gateway(s) and {len(workers)} worker(s); expected two and one")
        host_ports = [p.split(":")[0] for s in gateways for p in s.get("ports", [])]
        if len(set(host_ports)) != len(host_ports):
            problem(where, f"gateways share a host port: {host_ports}")


def check_redis_args(at, args):
    joined = " ".join(str(a) for a in args)
    if "--appendonly yes" not in joined:
        problem(at, "Redis without append-only persistence loses acknowledged runs on a restart")
    if "--maxmemory-policy noeviction" not in joined:
        problem(at, "Redis must refuse writes when full (maxmemory-policy noeviction), not evict runs")
    if not re.search(r"--maxmemory [0-9]", joined):
        problem(at, "without --maxmemory, noeviction never applies: Redis grows until it is killed")


def check_systemd(environments):
    """The unit's Environment= lines, with its own config file."""
    unit = (DEPLOY / "systemd/flowgate.service").read_text()
    env = {}
    for value in re.findall(r"^Environment=(.*)$", unit, re.M):
        name, _, setting = value.partition("=")
        env[name] = setting
    environments.append(("deploy/systemd/flowgate.service", env, DEPLOY / "systemd/config.toml"))


def check_kubernetes(folder, environments):
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    present = sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
    if sorted(listed) != present:
        problem(folder.relative_to(ROOT), f"kustomization lists {sorted(listed)}, the folder holds {present}")
    generated, objects = {}, []
    for generator in kustomization.get("configMapGenerator", []):
        literals = dict(item.split("=", 1) for item in generator.get("literals", []))
        generated[generator["name"]] = literals
        metadata = {"name": generator["name"], "namespace": kustomization["namespace"]}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": literals})
    for name in listed:
        for document in yaml.safe_load_all((folder / name).read_text()):
            if document:
                objects.append(document)
    for obj in objects:
        at = f"{folder.relative_to(ROOT)}: {obj['kind']}/{obj['metadata']['name']}"
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problem(at, f"Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}")
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        at = f"{folder.relative_to(ROOT)}: {obj['kind']}/{obj['metadata']['name']}"
        pod = obj["spec"]["template"]["spec"]
        labels = obj["spec"]["template"]["metadata"]["labels"]
        for container in pod["containers"]:
            if "resources" not in container or "memory" not in container["resources"].get("limits", {}):
                problem(at, f"container {container['name']} has no memory limit")
            if container["image"] == "docker.io/library/redis:7-bookworm":
                check_redis_args(at, container.get("args", []))
            if not is_flowgate(container["image"]):
                continue
            env = {}
            for source in container.get("envFrom", []):
                name = source["configMapRef"]["name"]
                if name not in generated:
                    problem(at, f"envFrom names {name}, which nothing generates")
                env.update(generated.get(name, {}))
            env.update({e["name"]: e["value"] for e in container.get("env", [])})
            environments.append((at, env, CONTAINER_CONFIG_FILE))
            ready = container.get("readinessProbe", {}).get("httpGet", {}).get("path")
            alive = container.get("livenessProbe", {}).get("httpGet", {}).get("path")
            if (ready, alive) != ("/readyz", "/healthz"):
                problem(at, f"readiness on {ready} and liveness on {alive}; expected /readyz and /healthz")
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace <= pre_stop + SHUTDOWN_GRACE:
                problem(at, f"termination grace {grace}s is not more than preStop {pre_stop}s + shutdown_grace {SHUTDOWN_GRACE}s")
            security = container.get("securityContext", {})
            if not pod.get("securityContext", {}).get("runAsNonRoot") or security.get("allowPrivilegeEscalation", True):
                problem(at, "runs as root or may escalate privileges")
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if "/run/secrets" not in mounts:
                problem(at, "the signing key is not mounted at /run/secrets")
        covered = [
            b for b in budgets if all(labels.get(k) == v for k, v in b["spec"]["selector"]["matchLabels"].items())
        ]
        if obj["kind"] == "Deployment" and not covered:
            problem(at, "no PodDisruptionBudget selects its pods")


def check_environments(binary, environments):
    """Each environment with its config file, the flows and templates."""
    with tempfile.TemporaryDirectory() as work:
        etc = pathlib.Path(work)
        (etc / "flows").symlink_to(ROOT / "flows")
        (etc / "templates").symlink_to(ROOT / "templates")
        (etc / "credentials").mkdir()  # systemd's %d
        for at, env, config in environments:
            for name in env:
                if name.startswith("FLOWGATE_") and "__" not in name and name not in OTHER_VARIABLES:
                    problem(at, f"{name} is neither a FLOWGATE_<SECTION>__<KEY> setting nor one of {sorted(OTHER_VARIABLES)}")
            shutil.copy(config, etc / "config.toml")
            clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWGATE_")}
            clean.update({k: v.replace("%d", str(etc / "credentials")) for k, v in env.items()})
            out = subprocess.run(
                [binary, "--config", str(etc / "config.toml"), "check"],
                env=clean,
                cwd=etc,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                problem(at, f"`flowgate check` with its environment failed: {out.stderr.strip() or out.stdout.strip()}")


def main():
    binary = os.path.abspath(sys.argv[1])
    environments = []
    compose_files = sorted(DEPLOY.glob("compose*.yaml"))
    for path in compose_files:
        check_compose(path, environments)
    check_kubernetes(DEPLOY / "kubernetes", environments)
    check_systemd(environments)
    check_environments(binary, environments)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        sys.exit(1)
    print(
        f"compose: {len(compose_files)} file(s) checked; kubernetes: valid for "
        f"{' and '.join(KUBERNETES_VERSIONS)}; {len(environments)} flowgate environment(s) (compose, Kubernetes, systemd) accepted by `flowgate check`"
    )


main()
