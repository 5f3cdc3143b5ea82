"""As root, the services run as an unprivileged user (stack/service_user.py, stack/deploy.py):
the layout, the supervisord programs, the code copy, the shared cache. No service starts."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from common.env import Env, parse_env_file
from stack import deploy
from stack import settings as stack_settings
from stack.service_user import ServiceUser, lookup, share_tree, write_as
from stack.services import path_with, supervisord_conf
from stack.settings import ensure_env_file, load_settings

REPO = Path(__file__).resolve().parents[2]
as_root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (what `make up` as root does)")


@pytest.fixture
def root_settings(tmp_path, monkeypatch):
    """Settings of a stack `make up` runs as root, with /var/lib/iot-lakehouse in tmp_path."""
    monkeypatch.setattr(stack_settings, "PG_ROOT_DATA", tmp_path / "var-lib")
    env_file = tmp_path / ".env"
    ensure_env_file(env_file, REPO / ".env.example", home=tmp_path / "clone" / ".stack")
    values = parse_env_file(env_file) | {"STACK_HOME": str(tmp_path / "clone" / ".stack"),
                                         "IOT_CACHE_DIR": str(tmp_path / "cache")}
    return dataclasses.replace(load_settings(Env(values)), service_user="iot-lakehouse")


def test_as_root_the_services_state_code_and_configs_live_outside_the_clone(root_settings, tmp_path):
    s = root_settings
    made = s.root_dir  # the id is made on first use
    root = tmp_path / "var-lib" / (tmp_path / "clone" / ".stack" / "stack-id").read_text().strip()
    assert made == root
    assert len(root.name) == 12
    assert (s.state, s.app, s.run_dir, s.log_dir) == (root / "home", root / "app", root / "run", root / "logs")
    assert s.airflow_home == root / "home" / "airflow"
    assert s.superset_home == root / "home" / "superset"
    assert s.spark_conf_dir == root / "run" / "spark-conf"
    assert s.pg_data == root / "postgres"
    # the clone's .stack keeps only the id (and the record of secrets in use)
    assert sorted(p.name for p in (tmp_path / "clone" / ".stack").iterdir()) == ["stack-id"]


@as_root_only
def test_as_root_every_program_but_postgres_runs_as_the_service_user(root_settings, tmp_path):
    s = root_settings
    conf = supervisord_conf(s, "/usr/bin/java", Path("/usr/lib/postgresql/15/bin"))
    sections = {}
    for block in conf.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("[program:"):
            sections[lines[0][9:-1]] = dict(line.split("=", 1) for line in lines[1:])
    assert sorted(sections) == ["airflow-api-server", "airflow-dag-processor", "airflow-scheduler",
                                "airflow-triggerer", "kafka", "minio", "postgres", "producer", "superset"]
    users = {name: opts.get("user") for name, opts in sections.items()}
    assert users == {**{name: "iot-lakehouse" for name in sections}, "postgres": "postgres"}
    for name, opts in sections.items():
        if name != "postgres":
            assert f'HOME="{s.state}"' in opts["environment"], name
            assert 'USER="iot-lakehouse"' in opts["environment"], name
    # the code they run is the copy, not the clone
    assert f"directory={s.app}\n" in conf
    assert str(s.repo) + "/" not in conf.replace(str(s.app), "").replace(str(tmp_path), "")  # tmp_path: the fake /var
    assert f"{s.app}/stack/bin/with-env" in sections["minio"]["command"]


def test_not_as_root_nothing_changes_user(tmp_path):
    env_file = tmp_path / ".env"
    ensure_env_file(env_file, REPO / ".env.example")
    values = parse_env_file(env_file) | {"STACK_HOME": str(tmp_path / "home"), "IOT_CACHE_DIR": str(tmp_path / "c")}
    s = dataclasses.replace(load_settings(Env(values)), service_user=None)
    conf = supervisord_conf(s, "/usr/bin/java", Path("/usr/lib/postgresql/15/bin"))
    assert "user=iot-lakehouse" not in conf
    assert "HOME=" not in conf
    assert (s.state, s.app, s.run_dir) == (s.home, s.repo, s.home / "run")


def test_the_code_copy_follows_the_clone_and_keeps_no_stale_file(tmp_path):
    repo, app = tmp_path / "repo", tmp_path / "app"
    (repo / "jobs" / "__pycache__").mkdir(parents=True)
    (repo / "jobs" / "stream.py").write_text("A = 1\n")
    (repo / "jobs" / "__pycache__" / "stream.cpython-311.pyc").write_bytes(b"x")
    (repo / "jobs" / "gone.py").write_text("B = 1\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "t.py").write_text("")
    (repo / "pyproject.toml").write_text("[project]\n")
    os.utime(repo / "jobs" / "stream.py", (1_700_000_000, 1_700_000_000))
    assert deploy.sync_code(repo, app, ("jobs", "pyproject.toml")) == 3
    assert sorted(str(p.relative_to(app)) for p in app.rglob("*") if p.is_file()) == [
        "jobs/gone.py", "jobs/stream.py", "pyproject.toml"]
    assert (app / "jobs" / "stream.py").stat().st_mtime == 1_700_000_000
    assert deploy.sync_code(repo, app, ("jobs", "pyproject.toml")) == 0  # nothing changed
    (repo / "jobs" / "gone.py").unlink()
    (repo / "jobs" / "stream.py").write_text("A = 22\n")
    assert deploy.sync_code(repo, app, ("jobs", "pyproject.toml")) == 2
    assert not (app / "jobs" / "gone.py").exists()
    assert (app / "jobs" / "stream.py").read_text() == "A = 22\n"


def test_app_parts_hold_everything_the_services_import():
    # each top-level package of the clone that a DAG, a job, the producer or Superset imports
    parts = set(deploy.APP_PARTS)
    for package in ("common", "dags", "dashboards", "jobs", "orchestration", "producer", "sql", "stack"):
        assert package in parts
        assert (REPO / package).is_dir()
    assert "tests" not in parts
    assert ".stack" not in parts


@as_root_only
def test_shared_trees_are_root_s_and_group_readable_never_writable(tmp_path):
    tree = tmp_path / "cache"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "tool").write_text("#!/bin/sh\n")
    (tree / "bin" / "tool").chmod(0o700)
    (tree / "data").write_text("x")
    (tree / "data").chmod(0o666)
    (tree / "link").symlink_to("/etc/shadow")
    assert share_tree(tree, 65534) > 0
    modes = {p.name: (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_gid) for p in [tree, *tree.rglob("*")]
             if not p.is_symlink()}
    assert modes == {"cache": (0o750, 65534), "bin": (0o750, 65534), "tool": (0o750, 65534),
                     "data": (0o640, 65534)}
    assert stat.S_IMODE(os.stat("/etc/shadow").st_mode) & 0o004 == 0  # the link was not followed
    assert share_tree(tree, 65534) == 0


@pytest.fixture
def passable_tmp():
    """A folder the service user may pass through (pytest's own is root's, 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="iot-service-user-test-"))
    folder.chmod(0o711)
    yield folder
    shutil.rmtree(folder)


@as_root_only
def test_a_file_written_as_the_service_user_replaces_a_planted_link(passable_tmp, monkeypatch):
    # the venv is readable by the service user only once `make up` shared it: the system's python
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    nobody = lookup("nobody")
    assert nobody is not None
    folder = passable_tmp / "state"
    folder.mkdir()
    os.chown(folder, nobody.uid, nobody.gid)
    target = passable_tmp / "root-only"
    target.write_text("root's\n")
    (folder / "passwords.json").symlink_to(target)
    write_as(ServiceUser("nobody", nobody.uid, nobody.gid), folder / "passwords.json", "{}")
    assert target.read_text() == "root's\n"
    written = folder / "passwords.json"
    assert not written.is_symlink()
    assert written.read_text() == "{}"
    st = written.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.uid, 0o600)


@as_root_only
def test_a_service_user_child_runs_with_its_ids_and_no_extra_group():
    nobody = lookup("nobody")
    out = ServiceUser("nobody", nobody.uid, nobody.gid).run(
        ["/usr/bin/python3", "-c", "import os; print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), "
                               "oct(os.umask(0)))"], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(nobody.uid), str(nobody.uid), str(nobody.gid), f"[{nobody.gid}]", "0o77"] or \
        out.split() == [str(nobody.uid), str(nobody.uid), str(nobody.gid), "[]", "0o77"]


@as_root_only
def test_as_root_the_services_path_leaves_out_root_s_home(monkeypatch):
    monkeypatch.setenv("PATH", f"{Path.home()}/.pyenv/shims:/usr/local/bin:/usr/bin")
    assert path_with(Path("/var/cache/iot-lakehouse/venv/bin")) == \
        "/var/cache/iot-lakehouse/venv/bin:/usr/local/bin:/usr/bin"


def test_stackctl_builds_root_s_venv_from_the_system_python_outside_root_s_home():
    text = (REPO / "stack" / "bin" / "stackctl").read_text()
    assert "cache=${cache:-/var/cache/iot-lakehouse}" in text
    assert "default_python=/usr/bin/python3.11" in text
    result = subprocess.run(["bash", "-n", str(REPO / "stack" / "bin" / "stackctl")], capture_output=True)
    assert result.returncode == 0
