"""Offline checks of arbot's Kubernetes deployment: Actions Runner Controller (deploy/arc/values.yaml) and the
runner image (deploy/Dockerfile.runner). Nothing here needs a cluster, Helm, Docker or the network:

- the values against the chart's own values.schema.json (tests/schemas/arc/, copied from
  actions/actions-runner-controller; its README names the commits);
- the runner pod (the values' template.spec, and the one the chart renders) against Kubernetes' own Pod
  schema at a pinned Kubernetes version, with PyPI's kubernetes-validate (schemas ship in its wheel);
- the AutoscalingRunnerSet that the chart renders from the values (`render_runner_set` follows the chart's
  templates/autoscalingrunnerset.yaml) against the CRD's openAPIV3Schema, unknown fields refused;
- what no schema constrains and the deployment needs (one GPU per runner, maxRunners as the GPU count, a
  pre-created secret, the least privilege bubblewrap needs), asserted directly;
- the Dockerfile, parsed: a pinned base, bubblewrap and git installed, torch from a CUDA index, the runtime
  dependencies those of pyproject.toml.
Each check has a negative twin that proves it refuses what it should.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
VALUES_FILE = ROOT / "deploy" / "arc" / "values.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile.runner"
SCALE_DOC = ROOT / "docs" / "scale.md"
WORKFLOW = ROOT / ".github" / "workflows" / "arbot-evaluate.yml"
SCHEMAS = ROOT / "tests" / "schemas" / "arc"
VALUES_SCHEMA = SCHEMAS / "values.schema.json"
CRD_FILE = SCHEMAS / "actions.github.com_autoscalingrunnersets.excerpt.yaml"

# The Kubernetes version the pod is validated at: user namespaces (hostUsers) are on by default from 1.33.
K8S_VERSION = "1.33.0"
# What `helm install RELEASE --namespace NAMESPACE` the docs use.
RELEASE = "arbot-gpu"
NAMESPACE = "arc-runners"
GPU = "nvidia.com/gpu"


# --- the chart, followed in Python --------------------------------------------------------------------------


class ChartError(ValueError):
    """What the chart's template refuses with `fail` (or `required`)."""


def _is_number(value) -> bool:
    # Helm's `kindIs "int64"` / `kindIs "float64"`: a YAML bool or string is neither.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render_runner_set(values: dict, release: str = RELEASE, namespace: str = NAMESPACE) -> dict:
    """The AutoscalingRunnerSet that charts/gha-runner-scale-set/templates/autoscalingrunnerset.yaml (at the
    commit named in tests/schemas/arc/README.md) renders from `values`, for the default container mode (no
    containerMode; the others add dind or kubernetes-mode containers this deployment does not use)."""
    values = copy.deepcopy(values)
    container_mode = values.get("containerMode") or {}
    if container_mode.get("type") in ("dind", "kubernetes"):
        raise NotImplementedError("containerMode dind/kubernetes is not followed here")
    if values.get("keyVault") or (values.get("githubServerTLS") or {}).get("runnerMountPath"):
        raise NotImplementedError("keyVault and githubServerTLS.runnerMountPath are not followed here")

    name = values.get("runnerScaleSetName") or release  # gha-runner-scale-set.scale-set-name
    if not name or len(name) > 45:
        raise ChartError("Name must have up to 45 characters")
    if len(namespace) > 63:
        raise ChartError("Namespace must have up to 63 characters")
    fullname = f"{name}-gha-rs"[:63].rstrip("-")  # gha-runner-scale-set.fullname

    url = values.get("githubConfigUrl")
    if not url:
        raise ChartError(".Values.githubConfigUrl is required")
    secret = values.get("githubConfigSecret")
    if isinstance(secret, str):
        if not secret:
            raise ChartError("Values.githubConfigSecret is required for setting auth with GitHub server.")
        secret_name = secret
    else:  # a map: the chart creates the secret from the values
        secret_name = f"{fullname}-github-secret"

    spec: dict = {"githubConfigUrl": url.removesuffix("/"), "githubConfigSecret": secret_name}
    for key in ("runnerGroup", "runnerScaleSetName"):
        if values.get(key):
            spec[key] = values[key]
    tls = values.get("githubServerTLS")
    if tls:
        spec["githubServerTLS"] = {}
        if tls.get("certificateFrom"):
            ref = tls["certificateFrom"]["configMapKeyRef"]
            spec["githubServerTLS"]["certificateFrom"] = {"configMapKeyRef": {"name": ref["name"], "key": ref["key"]}}
    proxy = values.get("proxy")
    if proxy:
        spec["proxy"] = {}
        for scheme in ("http", "https"):
            if proxy.get(scheme):
                spec["proxy"][scheme] = {"url": proxy[scheme].get("url")}
                if proxy[scheme].get("credentialSecretRef"):
                    spec["proxy"][scheme]["credentialSecretRef"] = proxy[scheme]["credentialSecretRef"]
        if proxy.get("noProxy") and isinstance(proxy["noProxy"], list):
            spec["proxy"]["noProxy"] = proxy["noProxy"]

    min_runners, max_runners = values.get("minRunners"), values.get("maxRunners")
    if _is_number(min_runners) and _is_number(max_runners) and min_runners > max_runners:
        raise ChartError("maxRunners has to be greater or equal to minRunners")
    # Only a number is rendered: the chart silently drops a maxRunners or minRunners of another kind.
    if _is_number(max_runners):
        if int(max_runners) < 0:
            raise ChartError("maxRunners has to be greater or equal to 0")
        spec["maxRunners"] = int(max_runners)
    if _is_number(min_runners):
        if int(min_runners) < 0:
            raise ChartError("minRunners has to be greater or equal to 0")
        spec["minRunners"] = int(min_runners)
    for key in ("listenerTemplate", "listenerMetrics"):
        if values.get(key):
            spec[key] = values[key]

    template_values = values.get("template") or {}
    pod_values = template_values.get("spec") or {}
    template: dict = {}
    metadata = template_values.get("metadata")
    if metadata:
        template["metadata"] = {k: metadata[k] for k in ("labels", "annotations") if metadata.get(k)}
    pod = {k: v for k, v in pod_values.items()
           if k not in ("containers", "volumes", "initContainers", "serviceAccountName")}
    if not pod_values.get("restartPolicy"):
        pod["restartPolicy"] = "Never"
    pod["serviceAccountName"] = pod_values.get("serviceAccountName") or f"{fullname}-no-permission"
    if pod_values.get("initContainers"):
        pod["initContainers"] = pod_values["initContainers"]
    containers = []
    for container in pod_values.get("containers") or []:  # gha-runner-scale-set.default-mode-runner-containers
        if container.get("name") != "runner":
            containers.append(container)
            continue
        runner = {"name": container["name"]}
        runner.update({k: v for k, v in container.items() if k not in ("env", "volumeMounts", "name")})
        for key in ("env", "volumeMounts"):
            if container.get(key):
                runner[key] = container[key]
        containers.append(runner)
    pod["containers"] = containers
    if pod_values.get("volumes"):
        pod["volumes"] = pod_values["volumes"]
    template["spec"] = pod
    spec["template"] = template

    values_hash = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:63]
    annotations = {
        "actions.github.com/values-hash": values_hash,
        "actions.github.com/cleanup-manager-role-binding": f"{fullname}-manager",
        "actions.github.com/cleanup-manager-role-name": f"{fullname}-manager",
    }
    if not isinstance(secret, str):
        annotations["actions.github.com/cleanup-github-secret-name"] = secret_name
    if not pod_values.get("serviceAccountName"):
        annotations["actions.github.com/cleanup-no-permission-service-account-name"] = f"{fullname}-no-permission"
    return {
        "apiVersion": "actions.github.com/v1alpha1",
        "kind": "AutoscalingRunnerSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/component": "autoscaling-runner-set",
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": "Helm",
                "app.kubernetes.io/part-of": "gha-rs",
                "actions.github.com/scale-set-name": name,
                "actions.github.com/scale-set-namespace": namespace,
            },
            "annotations": annotations,
        },
        "spec": spec,
    }


# --- the schemas ---------------------------------------------------------------------------------------------


def closed(schema):
    """The CRD schema with unknown fields refused, as the API server's strict field validation (kubectl's
    default) refuses them: every object schema that lists properties, and neither additionalProperties nor
    x-kubernetes-preserve-unknown-fields, gets additionalProperties: false."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k in ("properties", "items", "additionalProperties", "anyOf", "allOf", "oneOf", "not")
           else v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


def _crd_schema() -> dict:
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "AutoscalingRunnerSet"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return closed(version["schema"]["openAPIV3Schema"])


def crd_errors(runner_set: dict) -> list[str]:
    schema = _crd_schema()
    validator = jsonschema.Draft4Validator(schema)  # OpenAPI v3.0 schemas are a Draft 4 dialect
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(runner_set)]


def values_errors(values: dict) -> list[str]:
    schema = json.loads(VALUES_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in cls(schema).iter_errors(values)]


def pod_from(spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{RELEASE}-runner", "namespace": NAMESPACE},
            "spec": copy.deepcopy(spec)}


def validate_pod(pod: dict) -> str:
    """Kubernetes' own Pod schema at K8S_VERSION, unknown fields refused; returns the schema version used."""
    return kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def load_values() -> dict:
    return yaml.safe_load(VALUES_FILE.read_text())


def runner_container(pod_spec: dict) -> dict:
    (runner,) = [c for c in pod_spec["containers"] if c.get("name") == "runner"]
    return runner


# --- 1. the chart's values schema ----------------------------------------------------------------------------


def test_values_pass_the_charts_values_schema():
    assert values_errors(load_values()) == []


def test_the_values_schema_bites():
    bad = load_values()
    bad["listenerConfig"] = {"scaler": {"qps": 0}}
    assert any("qps" in e for e in values_errors(bad))
    bad["listenerConfig"] = {"scalr": {"qps": 5}}
    assert any("scalr" in e for e in values_errors(bad))


def test_the_values_schema_leaves_max_runners_to_us():
    # The chart's schema constrains only listenerConfig: it lets maxRunners: "two" through, and the chart then
    # renders no maxRunners at all (an unbounded scale set). Hence the direct assertions below, and the CRD.
    bad = load_values()
    bad["maxRunners"] = "two"
    assert values_errors(bad) == []
    assert "maxRunners" not in render_runner_set(bad)["spec"]
    with pytest.raises(AssertionError):
        check_runner_counts(bad)


# --- 2. the runner pod against Kubernetes' own schema -------------------------------------------------------


def test_runner_pod_passes_kubernetes_pod_schema():
    values = load_values()
    assert validate_pod(pod_from(values["template"]["spec"])) == "1.33"
    # and the pod spec as the chart renders it (restartPolicy and the service account added)
    assert validate_pod(pod_from(render_runner_set(values)["spec"]["template"]["spec"])) == "1.33"


@pytest.mark.parametrize("breakage", ["no container name", "unknown field", "hostUsers as a string",
                                      "seccompProfile without type"])
def test_the_pod_schema_bites(breakage):
    spec = load_values()["template"]["spec"]
    runner = runner_container(spec)
    if breakage == "no container name":
        del runner["name"]
    elif breakage == "unknown field":
        runner["securityContext"]["procMounts"] = "Unmasked"
    elif breakage == "hostUsers as a string":
        spec["hostUsers"] = "false"
    else:
        del runner["securityContext"]["seccompProfile"]["type"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod(pod_from(spec))


# --- 3. the AutoscalingRunnerSet against the CRD ------------------------------------------------------------


def test_rendered_runner_set_passes_the_crd_schema():
    runner_set = render_runner_set(load_values())
    assert crd_errors(runner_set) == [], (
        "a field 'unexpected' here that the CRD does have is missing from the excerpt: copy its subtree from the "
        "source file (tests/schemas/arc/README.md)")
    spec = runner_set["spec"]
    values = load_values()
    assert spec["runnerScaleSetName"] == values["runnerScaleSetName"]
    assert spec["maxRunners"] == values["maxRunners"] and spec["minRunners"] == values["minRunners"]
    assert spec["githubConfigSecret"] == values["githubConfigSecret"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("breakage,where", [
    ("maxRunners two", "maxRunners"),
    ("minRunners negative", "minRunners"),
    ("container without name", "containers"),
    ("unknown pod field", "nodeSelecter"),
    ("toleration seconds as text", "tolerationSeconds"),
])
def test_the_crd_schema_bites(breakage, where):
    runner_set = render_runner_set(load_values())
    spec = runner_set["spec"]
    pod = spec["template"]["spec"]
    if breakage == "maxRunners two":
        spec["maxRunners"] = "two"
    elif breakage == "minRunners negative":
        spec["minRunners"] = -1
    elif breakage == "container without name":
        del runner_container(pod)["name"]
    elif breakage == "unknown pod field":
        pod["nodeSelecter"] = pod.pop("nodeSelector")
    else:
        pod["tolerations"][0]["tolerationSeconds"] = "forever"
    errors = crd_errors(runner_set)
    assert errors and any(where in e for e in errors), errors


def test_the_chart_refuses_what_its_template_fails_on():
    values = load_values()
    for patch, message in [({"minRunners": values["maxRunners"] + 1}, "maxRunners has to be greater or equal to min"),
                           ({"minRunners": None, "maxRunners": -1}, "maxRunners has to be greater or equal to 0"),
                           ({"minRunners": -1}, "minRunners has to be greater or equal to 0"),
                           ({"githubConfigUrl": ""}, "githubConfigUrl is required"),
                           ({"githubConfigSecret": ""}, "githubConfigSecret is required"),
                           ({"runnerScaleSetName": "x" * 46}, "45 characters")]:
        bad = copy.deepcopy(values)
        bad.update(patch)
        with pytest.raises(ChartError, match=message):
            render_runner_set(bad)


# --- what no schema says: asserted directly -----------------------------------------------------------------


def check_runner_counts(values: dict) -> None:
    max_runners, min_runners = values.get("maxRunners"), values.get("minRunners")
    assert _is_number(max_runners) and isinstance(max_runners, int) and max_runners >= 1, max_runners
    assert isinstance(min_runners, int) and not isinstance(min_runners, bool) and 0 <= min_runners <= max_runners


def gpus_of(container: dict) -> dict:
    resources = container.get("resources") or {}
    return {kind: (resources.get(kind) or {}).get(GPU) for kind in ("limits", "requests")}


def check_one_gpu_per_runner(pod_spec: dict) -> None:
    runner = runner_container(pod_spec)
    gpus = gpus_of(runner)
    assert str(gpus["limits"]) == "1", f"the runner container must have the limit {GPU}: 1, not {gpus['limits']}"
    assert gpus["requests"] in (None, 1, "1"), "a GPU request, if any, equals the limit"
    others = [c for c in pod_spec["containers"] + pod_spec.get("initContainers", []) if c is not runner]
    assert all(gpus_of(c) == {"limits": None, "requests": None} for c in others), "only the runner holds a GPU"


def test_runner_counts_match_the_gpus():
    values = load_values()
    check_runner_counts(values)
    check_one_gpu_per_runner(values["template"]["spec"])
    # maxRunners runners of one GPU each: the scale set claims at most maxRunners GPUs, the one GPU count.
    rendered = render_runner_set(values)["spec"]
    assert rendered["maxRunners"] * int(gpus_of(runner_container(rendered["template"]["spec"]))["limits"]) \
        == values["maxRunners"]


def test_one_gpu_per_runner_bites():
    for gpus in (2, "2", None):
        spec = load_values()["template"]["spec"]
        limits = runner_container(spec)["resources"]["limits"]
        if gpus is None:
            del limits[GPU]
        else:
            limits[GPU] = gpus
        with pytest.raises(AssertionError):
            check_one_gpu_per_runner(spec)
    spec = load_values()["template"]["spec"]
    spec["containers"].append({"name": "sidecar", "image": "busybox:1.36", "resources": {"limits": {GPU: 1}}})
    with pytest.raises(AssertionError):
        check_one_gpu_per_runner(spec)
    for max_runners, min_runners in [(0, 0), (2.5, 0), (True, 0), (2, 3), (2, -1)]:
        with pytest.raises(AssertionError):
            check_runner_counts({"maxRunners": max_runners, "minRunners": min_runners})


SECRET_KEYS = ("github_token", "github_app_id", "github_app_installation_id", "github_app_private_key")


def test_secret_is_pre_created_never_inline():
    values = load_values()
    secret = values["githubConfigSecret"]
    assert isinstance(secret, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", secret), secret
    text = VALUES_FILE.read_text()
    assert not [k for k in SECRET_KEYS if re.search(rf"^\s*{k}\s*:", text, re.M)], "keys never go in the values"
    assert not re.search(r"gh[pousr]_[A-Za-z0-9]{20,}|BEGIN [A-Z ]*PRIVATE KEY", text)
    assert values["githubConfigUrl"].startswith("https://github.com/")


def test_runner_container_and_scheduling():
    values = load_values()
    assert "containerMode" not in values, "no dind (privileged) and no kubernetes mode"
    spec = values["template"]["spec"]
    runner = runner_container(spec)
    assert runner["command"] == ["/home/runner/run.sh"]
    image, _, tag = runner["image"].rpartition(":")
    assert image and "/" in image and tag and tag != "latest", runner["image"]
    assert spec["nodeSelector"], "GPU nodes only"
    assert any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in spec["tolerations"])
    assert len(values["runnerScaleSetName"]) <= 45


def test_least_privilege_for_bubblewrap():
    spec = load_values()["template"]["spec"]
    assert spec.get("hostUsers") is False  # Kubernetes accepts procMount: Unmasked only in a user namespace
    for container in spec["containers"]:
        ctx = container.get("securityContext") or {}
        assert not ctx.get("privileged"), "never a privileged container"
        assert not (ctx.get("capabilities") or {}).get("add"), "no added capability"
    ctx = runner_container(spec)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1001
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["seccompProfile"]["type"] in ("Unconfined", "Localhost")  # the runtime default refuses unshare
    assert ctx["appArmorProfile"]["type"] in ("Unconfined", "Localhost")  # the runtime default refuses mount
    assert ctx["procMount"] == "Unmasked"  # a masked /proc makes bwrap's --proc fail ("mount too revealing")
    assert "securityContext" not in spec or not spec["securityContext"].get("privileged")


# --- the docs and the workflow agree with the values ---------------------------------------------------------


def test_docs_match_the_values():
    values, doc = load_values(), SCALE_DOC.read_text()
    assert doc.startswith("# Scale out\n") and "## Kubernetes (Actions Runner Controller)" in doc
    name = values["runnerScaleSetName"]
    assert f"runs-on: {name}" in doc
    assert re.search(rf"helm install {re.escape(name)} --namespace {NAMESPACE} .*-f deploy/arc/values.yaml", doc)
    assert re.search(rf"kubectl create secret generic {re.escape(values['githubConfigSecret'])} --namespace "
                     rf"{NAMESPACE}\b", doc)
    # the controller release the docs install is the one the values name as the controller's service account
    release, namespace = re.search(r"helm install (\S+) --namespace (\S+) .*gha-runner-scale-set-controller\b",
                                   doc).groups()
    assert values["controllerServiceAccount"] == {"namespace": namespace, "name": f"{release}-gha-rs-controller"}
    for word in ("kubectl get autoscalingrunnersets", "ephemeralrunners", "Pending", "listener", GPU):
        assert word in doc, word


def test_workflow_reaches_the_scale_set_or_the_docs_say_how():
    # With ARC, runs-on is the scale set's name. Until the evaluate workflow says so, the docs must say what to
    # change (the workflow is edited by whoever deploys; see docs/scale.md).
    name = load_values()["runnerScaleSetName"]
    runs_on = yaml.safe_load(WORKFLOW.read_text())["jobs"]["train"]["runs-on"]
    if runs_on in (name, [name]):
        return
    current = f"[{', '.join(runs_on)}]" if isinstance(runs_on, list) else str(runs_on)
    doc = SCALE_DOC.read_text()
    assert f"runs-on: {current}" in doc and f"runs-on: {name}" in doc, (runs_on, "docs/scale.md must say how")


# --- the runner image ----------------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buffer = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        buffer += " " + stripped.removesuffix("\\") if buffer else stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            instruction, _, args = buffer.strip().partition(" ")
            out.append((instruction.upper(), args.strip()))
            buffer = ""
    assert not buffer, "a dangling continuation line"
    return out


def _commands(instructions) -> list[list[str]]:
    """The shell commands of the RUN instructions, split on && and ;."""
    commands = []
    for instruction, args in instructions:
        if instruction == "RUN":
            for part in re.split(r"&&|;", args):
                if part.strip():
                    commands.append(shlex.split(part))
    return commands


def image_facts(text: str) -> dict:
    instructions = dockerfile_instructions(text)
    froms = [args for instruction, args in instructions if instruction == "FROM"]
    apt, pip = set(), []
    for words in _commands(instructions):
        if words[:2] in (["apt-get", "install"], ["apt", "install"]):
            apt |= {w for w in words[2:] if not w.startswith("-")}
        if words[:4] == ["python3", "-m", "pip", "install"] or words[:2] in (["pip", "install"], ["pip3", "install"]):
            pip.append(words)
    users = [args for instruction, args in instructions if instruction == "USER"]
    return {"from": froms, "apt": apt, "pip": pip, "user": users[-1] if users else None}


def _pip_args(words: list[str]) -> list[str]:
    return words[words.index("install") + 1:]


def _requirement_names(requirements) -> dict[str, str]:
    return {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower().replace("_", "-"): r for r in requirements}


def pyproject_dependencies() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()
    if tomllib is not None:
        return tomllib.loads(text)["project"]["dependencies"]
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)  # pragma: no cover
    return re.findall(r'"([^"]+)"', block)  # pragma: no cover


def check_runner_image(text: str) -> None:
    facts = image_facts(text)
    assert len(facts["from"]) == 1, facts["from"]
    base = facts["from"][0]
    assert re.fullmatch(r"ghcr\.io/actions/actions-runner:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", base), \
        f"the base must be ARC's runner image at a pinned version, not {base}"
    assert {"python3", "python3-venv", "python3-pip", "git", "bubblewrap"} <= facts["apt"], facts["apt"]
    torch = [words for words in facts["pip"] if any(w.startswith("torch") for w in _pip_args(words))]
    assert len(torch) == 1, "torch is installed by one pip command"
    words = torch[0]
    assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", w) for w in words), "torch pinned with =="
    index = words[words.index("--index-url") + 1] if "--index-url" in words else ""
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d{3}", index), f"a CUDA index, not {index!r}"
    packages = [w for ws in facts["pip"] if ws is not words for w in _pip_args(ws) if not w.startswith("-")]
    expected = {k: v for k, v in _requirement_names(pyproject_dependencies()).items() if k != "torch"}
    assert _requirement_names(packages) == expected, "the image's dependencies must be pyproject.toml's"
    assert facts["user"] == "runner", "ARC runs run.sh as the image's runner user"


def test_runner_image_dockerfile():
    check_runner_image(DOCKERFILE.read_text())


@pytest.mark.parametrize("old,new", [
    ("FROM ghcr.io/actions/actions-runner:2.328.0", "FROM ghcr.io/actions/actions-runner:latest"),
    ("python3-pip git bubblewrap", "python3-pip git"),
    ("python3-venv python3-pip git", "python3-venv python3-pip"),
    ("torch==2.9.0 --index-url https://download.pytorch.org/whl/cu128", "torch==2.9.0"),
    ("torch==2.9.0 --index-url https://download.pytorch.org/whl/cu128",
     "torch==2.9.0 --index-url https://download.pytorch.org/whl/cpu"),
    ("torch==2.9.0", "torch"),
    ('    "httpx>=0.27"', '    "httpx>=0.27" \\\n    "requests>=2"'),
    ('    "PyGithub>=2.3" \\\n', ""),
    ("USER runner", "USER root"),
])
def test_runner_image_check_bites(old, new):
    text = DOCKERFILE.read_text()
    assert old in text, old
    with pytest.raises(AssertionError):
        check_runner_image(text.replace(old, new))
