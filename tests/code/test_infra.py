"""The deployment descriptions agree with the code and with each other: every setting the code
reads is documented in .env.example and the compose file gets each one it uses from there;
service names, ports and URLs line up (compose and Kubernetes); no secret has a literal value
or default; the image lock matches the project's lock; and a secret scan of the tree."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "infra" / "compose" / "docker-compose.yml"
K8S = REPO / "infra" / "k8s"
ENV_EXAMPLE = REPO / ".env.example"
PLACEHOLDER = "change-me"

# Read by the code from the environment but generic to any program: not the project's.
GENERIC = {"PATH", "PYTHONPATH", "HOME", "XDG_DATA_HOME"}
SETTING = re.compile(r"^(BUSI|MLFLOW|AWS|AIRFLOW)_[A-Z0-9_]+$")
# A compose interpolation: ${VAR}, ${VAR:-default}, ${VAR:?message} ($$ is a literal $).
INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z0-9_]+)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(
    r"(?i)(password|passwd|secret|token|fernet|_key$|secret_key|jwt)(?!.*_FILE$)"
)


# ---------------------------------------------------------------- what the code reads


def _env_reads(tree: ast.AST) -> set[str]:
    """Names read with <mapping>.get("X"), os.getenv("X"), <...environ>["X"] or
    int_setting(environ, "X", ...)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func, args = node.func, node.args
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            index = 1 if name == "int_setting" else 0
            if name in ("get", "getenv", "int_setting") and len(args) > index:
                arg = args[index]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
        elif (
            isinstance(node, ast.Subscript)
            and "environ" in ast.unparse(node.value)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            found.add(node.slice.value)
    return {name for name in found if SETTING.match(name) or name in GENERIC}


@cache
def code_settings() -> frozenset[str]:
    files = [
        *sorted((REPO / "components").glob("*.py")),
        *sorted((REPO / "busi").rglob("*.py")),
        *sorted((REPO / "dags").glob("*.py")),
    ]
    names = set()
    for path in files:
        names |= _env_reads(ast.parse(path.read_text(), str(path)))
    return frozenset(names - GENERIC)


def env_example() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, required) of .env.example; a commented-out NAME= line is optional."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            out[match[2]] = (match[3], match[1] is None)
    return out


def test_every_setting_the_code_reads_is_documented():
    reads = code_settings()
    # The scan sees what it should (a few known readers).
    assert {"MLFLOW_TRACKING_URI", "BUSI_S3_ENDPOINT_URL", "BUSI_AIRFLOW_DB_URI"} <= reads
    assert {"BUSI_MLFLOW_PORT", "MLFLOW_S3_ENDPOINT_URL", "BUSI_LANDING"} <= reads
    missing = sorted(reads - set(env_example()))
    assert not missing, f"read by the code, not in .env.example: {missing}"


def test_env_example_holds_no_secret():
    for name, (value, _) in env_example().items():
        if SECRET_NAME.search(name) and name != "AWS_DEFAULT_REGION":
            assert value in (PLACEHOLDER, ""), f".env.example: {name}={value!r}"
    assert ".env" in (REPO / ".gitignore").read_text().split()
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout.strip() == ""


# ---------------------------------------------------------------- compose


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict:
    return compose()["services"]


def _scalars(node, path=()):
    """(path, string) of every string in a parsed YAML tree (keys included)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, "<key>"), str(key)
            yield from _scalars(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _scalars(value, (*path, str(i)))
    elif isinstance(node, str):
        yield path, node


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(match):
        name, op, default = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        if op in (":-", "-"):
            return default
        raise KeyError(name)

    return INTERPOLATION.sub(one, text).replace("$$", "$")


def example_env() -> dict[str, str]:
    """What a copy of .env.example gives compose (the required lines only)."""
    return {name: value for name, (value, required) in env_example().items() if required}


def environment(service: str) -> dict[str, str]:
    env = services()[service].get("environment") or {}
    return {k: interpolate(str(v), example_env()) for k, v in env.items()}


def command(service: str) -> list[str]:
    cmd = services()[service].get("command") or []
    cmd = cmd if isinstance(cmd, list) else cmd.split()
    return [interpolate(str(part), example_env()) for part in cmd]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_compose_interpolations_come_from_env_example():
    documented = env_example()
    for path, text in _scalars(compose()):
        for match in INTERPOLATION.finditer(text):
            name, op = match[1], match[2]
            assert name in documented, f"{'/'.join(path)}: ${{{name}}} not in .env.example"
            if op == ":?":
                # Required by compose: a copy of .env.example must set it.
                assert documented[name][1], f"{name} is required by compose: uncomment it"
    # ... and resolves with nothing but that copy.
    for _, text in _scalars(compose()):
        interpolate(text, example_env())


def test_no_secret_in_compose_has_a_literal_value_or_a_default():
    for path, text in _scalars(compose()):
        for match in INTERPOLATION.finditer(text):
            if SECRET_NAME.search(match[1]) and match[1] != "AWS_DEFAULT_REGION":
                assert match[2] == ":?", f"{'/'.join(path)}: {match[0]} must be ${{X:?...}}"
        # Credentials inside URLs come from .env too.
        for url in re.findall(r"[a-z0-9+]+://[^\s\"']+", text):
            password = urlsplit(url).password
            if password is not None:
                assert password.startswith("${") or password == "", f"{'/'.join(path)}: {url}"
    for name, svc in services().items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key) and key != "AWS_DEFAULT_REGION":
                assert str(value).startswith("${"), f"{name}: {key} has a literal value"


def test_compose_services_reach_each_other_by_name_and_port():
    svcs = services()
    mlflow_port = option(command("mlflow"), "--port")
    assert option(command("mlflow"), "--host") == "0.0.0.0"
    api_port = option(command("airflow-apiserver"), "--port")
    for name in ("airflow-worker", "airflow-scheduler", "app", "serve", "busi-cli"):
        uri = urlsplit(environment(name)["MLFLOW_TRACKING_URI"])
        assert (uri.hostname, str(uri.port)) == ("mlflow", mlflow_port), name
    env = environment("airflow-worker")
    execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution.hostname, str(execution.port)) == ("airflow-apiserver", api_port)
    for key in ("BUSI_S3_ENDPOINT_URL",):
        assert urlsplit(env[key]).netloc == "minio:9000"
    assert urlsplit(environment("mlflow")["MLFLOW_S3_ENDPOINT_URL"]).netloc == "minio:9000"
    # The databases the URIs name are the ones postgres-init.sql creates, on `postgres`.
    created = set(
        re.findall(r"CREATE DATABASE (\w+)", (COMPOSE.parent / "postgres-init.sql").read_text())
    )
    uris = [
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        env["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"),
        environment("mlflow")["MLFLOW_BACKEND_STORE_URI"],
    ]
    for uri in map(urlsplit, uris):
        assert uri.scheme == "postgresql+psycopg2"  # the driver in the lock
        assert (uri.hostname, uri.port or 5432) == ("postgres", 5432)
        assert uri.path.lstrip("/") in created
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    # One bucket for everything, the one minio-init creates.
    bucket = environment("minio-init")["BUSI_S3_BUCKET"]
    for url in (
        env["BUSI_DVC_REMOTE"],
        env["BUSI_LANDING"],
        option(command("mlflow"), "--artifacts-destination"),
    ):
        assert url.startswith(f"s3://{bucket}/"), url
    # Published ports lead to the port each service listens on.
    listening = {
        "mlflow": mlflow_port,
        "airflow-apiserver": api_port,
        "app": option(command("app"), "--port"),
        "serve": option(command("serve"), "--port"),
    }
    for name, port in listening.items():
        published = [interpolate(p, {}) for p in svcs[name]["ports"]]
        assert [p.rsplit(":", 1)[1] for p in published] == [port], name
        assert all(p.startswith("127.0.0.1:") for p in published), name


@pytest.mark.slow
def test_mlflow_answers_the_host_names_its_clients_use():
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = option(command("mlflow"), "--allowed-hosts").split(",")
    port = option(command("mlflow"), "--port")
    assert is_allowed_host_header(allowed, f"mlflow:{port}")
    published = interpolate(services()["mlflow"]["ports"][0], {}).split(":")[1]
    assert is_allowed_host_header(allowed, f"localhost:{published}")
    assert not is_allowed_host_header(allowed, f"attacker.example:{port}")
    k8s_allowed = option(k8s_container("Deployment", "busi-mlflow")["command"], "--allowed-hosts")
    netloc = urlsplit(k8s_config()["MLFLOW_TRACKING_URI"]).netloc
    for host in (netloc, f"busi-mlflow.busi.svc.cluster.local:{netloc.split(':')[1]}"):
        assert is_allowed_host_header(k8s_allowed.split(","), host), host


def test_compose_health_checks_dependencies_and_volumes():
    svcs = services()
    one_shot = {name for name, s in svcs.items() if s.get("restart") == "no"}
    assert {"minio-init", "airflow-init"} <= one_shot
    for name, svc in svcs.items():
        if name not in one_shot:
            assert "healthcheck" in svc, f"{name} has no health check"
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in svcs, f"{name} depends on {dep}"
            assert dep != name, f"{name} depends on {dep}"
            wanted = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert how["condition"] == wanted, f"{name} -> {dep}"
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in compose()["volumes"], f"{name}: volume {source}"
    # Health checks probe the port the service listens on.
    for name, port in (("mlflow", "5000"), ("airflow-apiserver", "8080"), ("app", "8501")):
        assert f"localhost:{port}/" in " ".join(svcs[name]["healthcheck"]["test"]), name
    # Airflow: the components of Airflow 3 and a Celery worker, one migration first.
    assert "db migrate" in " ".join(command("airflow-init"))
    assert environment("airflow-worker")["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for part in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert any(part in command(name) for name in svcs), part
    assert command("airflow-worker")[1:] == ["celery", "worker"]


def test_app_and_serve_hold_no_storage_credentials():
    for name in ("app", "serve"):
        env = environment(name)
        assert not [k for k in env if k.startswith("AWS_") or "PASSWORD" in k], name
        assert "postgres" not in " ".join(env.values()), name


# ---------------------------------------------------------------- the busi commands they run


def _busi_invocations() -> list[tuple[str, list[str]]]:
    calls = [(f"compose {name}", command(name)) for name in ("app", "serve")]
    for doc in k8s_docs():
        for container in _containers(doc):
            if (container.get("command") or [""])[0] == "busi":
                calls.append((f"k8s {doc['metadata']['name']}", container["command"]))
    return calls


@pytest.mark.slow
def test_the_busi_commands_take_the_options_given():
    missing, helps = [], {}
    for where, argv in _busi_invocations():
        assert argv[0] == "busi"
        if argv[1] not in helps:
            proc = subprocess.run(
                [sys.executable, "-m", "components", argv[1], "--help"],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=120,
            )
            assert proc.returncode == 0, f"busi {argv[1]} --help: {proc.stderr[-2000:]}"
            helps[argv[1]] = proc.stdout
        flags = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
        missing += [(where, argv[1], f) for f in sorted(flags) if f not in helps[argv[1]]]
    assert not missing


# ---------------------------------------------------------------- Kubernetes


@cache
def k8s_docs() -> tuple[dict, ...]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "airflow-values.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return tuple(docs)


def k8s(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def k8s_config() -> dict[str, str]:
    return k8s("ConfigMap")["busi-config"]["data"]


def _pod_spec(doc: dict) -> dict:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] not in ("Pod", "Deployment", "Job"):
        return []
    spec = _pod_spec(doc)
    return spec.get("initContainers", []) + spec["containers"]


def k8s_container(kind: str, name: str) -> dict:
    return _containers(k8s(kind)[name])[0]


@cache
def helm_values() -> dict:
    return yaml.safe_load((K8S / "airflow-values.yaml").read_text())


def test_k8s_objects_are_well_formed():
    for doc in k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "busi-pipeline"
    for name, dep in k8s("Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        for container in _containers(dep):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, (name, probe)
            assert "memory" in container["resources"]["limits"], name


def test_every_k8s_service_selects_a_deployment_and_its_port():
    deployments = k8s("Deployment")
    for name, svc in k8s("Service").items():
        matches = [
            d
            for d in deployments.values()
            if svc["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} Deployments"
        ports = {p["name"] for c in _containers(matches[0]) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
    # Clients reach MLflow by its Service name and port; the server listens there.
    uri = urlsplit(k8s_config()["MLFLOW_TRACKING_URI"])
    service = k8s("Service")[uri.hostname]
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    mlflow_argv = k8s_container("Deployment", "busi-mlflow")["command"]
    assert option(mlflow_argv, "--port") == str(uri.port)
    assert option(mlflow_argv, "--host") == "0.0.0.0"
    for name, port in (("busi-app", 8501), ("busi-serve", 5001)):
        assert option(k8s_container("Deployment", name)["command"], "--port") == str(port)
        assert [p["port"] for p in k8s("Service")[name]["spec"]["ports"]] == [port]


def _refs(node, kind: str):
    """(name, key, optional) of every configMapKeyRef / secretKeyRef below node."""
    if isinstance(node, dict):
        if kind in node:
            ref = node[kind]
            yield ref["name"], ref["key"], ref.get("optional", False)
        for value in node.values():
            yield from _refs(value, kind)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value, kind)


def test_k8s_references_resolve():
    secrets = {n: set(s["stringData"]) for n, s in k8s("Secret").items()}
    configs = {n: set(c["data"]) for n, c in k8s("ConfigMap").items()}
    claims = set(k8s("PersistentVolumeClaim"))
    for doc in k8s_docs():
        for name, key, _ in _refs(doc, "secretKeyRef"):
            assert key in secrets.get(name, ()), (doc["metadata"]["name"], name, key)
        for name, key, optional in _refs(doc, "configMapKeyRef"):
            assert optional or key in configs.get(name, ()), (doc["metadata"]["name"], name, key)
        for container in _containers(doc):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configs
        for volume in _pod_spec(doc).get("volumes", []) if _containers(doc) else []:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
    # The Helm values name the same Secrets, keys and claim.
    values = helm_values()
    airflow_keys = {"connection", "fernet-key", "api-secret-key", "jwt-secret"}
    for ref in (
        values["data"]["metadataSecretName"],
        values["fernetKeySecretName"],
        values["apiSecretKeySecretName"],
        values["jwtSecretName"],
    ):
        assert airflow_keys <= secrets[ref]
    for item in values["secret"]:
        assert item["secretKey"] in secrets[item["secretName"]]
    assert "name: busi-config" in values["extraEnvFrom"]
    for volume in values["workers"]["extraVolumes"]:
        assert volume["persistentVolumeClaim"]["claimName"] in claims
    # Where the tasks run the pipeline: the workspace volume, with its code on PYTHONPATH.
    mount = values["workers"]["extraVolumeMounts"][0]["mountPath"]
    assert k8s_config()["BUSI_PROJECT_DIR"] == k8s_config()["PYTHONPATH"] == mount


def test_helm_values_describe_the_kubernetes_executor_with_git_dags():
    values = helm_values()
    assert values["executor"] == "KubernetesExecutor"
    assert values["postgresql"]["enabled"] is False
    git = values["dags"]["gitSync"]
    assert git["enabled"] is True
    assert (REPO / git["subPath"]).is_dir()
    assert values["airflowVersion"] == _locked("requirements/lock.txt")["apache-airflow"]
    assert values["airflowHome"] == "/opt/busi/airflow-home"  # the image's AIRFLOW_HOME
    assert "AIRFLOW_HOME=/opt/busi/airflow-home" in (REPO / "infra" / "Dockerfile").read_text()


def test_one_image_everywhere_and_gpu_pods_on_gpu_nodes():
    values = helm_values()
    image = f"{values['defaultAirflowRepository']}:{values['defaultAirflowTag']}"
    for doc in k8s_docs():
        for container in _containers(doc):
            expected = f"{image}-gpu" if doc["kind"] == "Pod" else image
            assert container["image"] == expected, doc["metadata"]["name"]
    pod = k8s("Pod")["busi-train"]
    container = _containers(pod)[0]
    assert container["name"] == "base"  # what KubernetesPodOperator/pod_override replace
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    assert pod["spec"]["nodeSelector"]


def test_kubectl_client_side_validation(tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl binary on PATH")
    env = dict(os.environ)
    if not env.get("KUBECONFIG") and not (Path.home() / ".kube" / "config").exists():
        # Without a cluster kubectl would try localhost:8080, where the local Airflow UI
        # may listen: point it at a port nothing answers on.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
            "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
            "users": [{"name": "none", "user": {"token": "unused"}}],
            "current-context": "none",
        }
        (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
        env["KUBECONFIG"] = str(tmp_path / "kubeconfig")
    argv = [kubectl, "apply", "--dry-run=client", "--validate=strict", "-o", "name"]
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "airflow-values.yaml":
            argv += ["-f", str(path)]
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    unreachable = re.search(r"openapi|connection refused|no such host|dial tcp", proc.stderr)
    if proc.returncode != 0 and unreachable:
        pytest.skip(
            "kubectl's client-side validation needs the OpenAPI schema of an API server, and "
            "none is reachable here (set KUBECONFIG to a cluster to run it)"
        )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- the image


def _locked(path: str) -> dict[str, str]:
    pins = re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", (REPO / path).read_text(), re.M)
    return dict(pins)


def test_image_lock_extends_the_project_lock():
    project, image = _locked("requirements/lock.txt"), _locked("infra/lock.txt")
    assert set(project) <= set(image), sorted(set(project) - set(image))
    differ = {name for name in project if project[name] != image[name]}
    # The Celery provider's redis extra constrains these; resolvers settle them either way.
    assert differ <= {"packaging", "celery", "kombu"}, {n: (project[n], image[n]) for n in differ}
    for provider in ("apache-airflow-providers-celery", "apache-airflow-providers-cncf-kubernetes"):
        assert provider in image
    assert "redis" in image
    assert "asyncpg" in image
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert "pip install -r /opt/busi/project/infra/lock.txt" in dockerfile
    ignored = (REPO / "infra" / "Dockerfile.dockerignore").read_text().split()
    assert {".env", ".dvc/config.local", ".venv/"} <= set(ignored)


# ---------------------------------------------------------------- secret scan

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "AWS secret access key": re.compile(
        r"(?i)aws_secret_access_key\W{1,4}(?!change-me|testing)[A-Za-z0-9/+=]{40}\b"
    ),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}\b"),
}
# `password: literal` / `PASSWORD=literal` style assignments in config files.
ASSIGNED = re.compile(
    r"(?im)^\s*(?:export\s+|#\s*)?[\"']?([A-Za-z0-9_.-]*(?:password|passwd|secret|token|fernet[-_]key))"
    r"[\"']?\s*[:=]\s*[\"']?([^\s\"'#]+)"
)
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@\"'`]+:([^\s@/\"'`]+)@")
# Values that are not secrets: placeholders, references, interpolations.
ALLOWED = re.compile(
    r"^(change-me|password|pass|pw|<[^>]*>|\$\{.*|\$\(.*|\{.*|\$\$?\w.*|\.\.\.|\*+|)$"
)
CONFIG_SUFFIXES = {
    ".yml",
    ".yaml",
    ".env",
    ".example",
    ".cfg",
    ".ini",
    ".toml",
    ".json",
    ".txt",
    ".md",
}
FLAGS = {"true", "false", "none", "null", "required", "optional"}
REFERENCE_KEYS = re.compile(r"(?i)(secretname|secretkey|secretref|_file|tokens?_url|secrets?)$")


def scanned_files() -> list[Path]:
    proc = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    paths = [REPO / p for p in proc.stdout.decode().split("\0") if p]
    return [p for p in paths if p.is_file() and p.stat().st_size < 2_000_000]


def secret_findings(path: Path, text: str) -> list[str]:
    rel = path.relative_to(REPO).as_posix()
    in_tests = rel.startswith("tests/")
    found = [f"{rel}: {what}" for what, rx in SECRET_PATTERNS.items() if rx.search(text)]
    for password in URL_PASSWORD.findall(text):
        if not ALLOWED.match(password) and not (in_tests and password == "testing"):
            found.append(f"{rel}: a password in a URL ({password[:3]}...)")
    if path.suffix in CONFIG_SUFFIXES or path.name.startswith((".env", "Dockerfile")):
        for key, value in ASSIGNED.findall(text):
            if REFERENCE_KEYS.search(key) or ALLOWED.match(value):
                continue
            if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", value) or value.lower() in FLAGS:
                continue  # the name of a variable or key, or a flag, not a value
            found.append(f"{rel}: {key} = {value[:3]}...")
    return found


def test_secret_scan_finds_what_it_looks_for():
    fake_key = "AKIA" + "Q" * 16
    word = "hunter" + "22"  # never written whole, so the scan of this file stays clean
    samples = {
        "x.py": f'key = "{fake_key}"',
        "k.pem": "-----BEGIN RSA " + "PRIVATE KEY-----\nMIIE",
        "c.yaml": f"db:\n  password: {word}\n",
        "u.md": f"postgresql://busi:{word}@db/airflow",
        ".env.bad": f"REDIS_PASSWORD={word}\n",
    }
    for name, text in samples.items():
        assert secret_findings(REPO / name, text), name
    fine = {
        ".env.ok": "POSTGRES_PASSWORD=change-me\n# MINIO_ROOT_PASSWORD=change-me\n",
        "c.yaml": "password: ${POSTGRES_PASSWORD:?set it}\nsecretName: busi-s3\n",
        "u.md": "postgresql+psycopg2://busi:<password>@host/db and ://u:${PW}@h",
    }
    for name, text in fine.items():
        assert not secret_findings(REPO / name, text), name


def test_no_secrets_in_the_tree():
    findings = []
    for path in scanned_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        findings += secret_findings(path, text)
    assert not findings, "\n".join(findings)
