"""A missing prerequisite stops `make up` with a message naming it and the fix."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from common.env import Env
from stack import install, manager
from stack.settings import ensure_env_file, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_missing_java_is_named_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(install.MissingPrerequisite, match=r"`java` not found on PATH\. Install a JDK 17"):
        install.check_java()


def test_missing_go_is_named_when_minio_must_be_built(monkeypatch, tmp_path):
    from stack.settings import parse_env_file

    env_file = tmp_path / ".env"
    ensure_env_file(env_file, REPO / ".env.example")
    values = parse_env_file(env_file) | {"STACK_HOME": str(tmp_path / "h"),
                                         "IOT_CACHE_DIR": str(tmp_path / "empty-cache")}
    settings = load_settings(Env(values))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(install.MissingPrerequisite, match=r"`go` not found on PATH\. Install Go 1\.24"):
        install.build_go_binaries(settings)


def test_taken_port_is_named_with_its_variable(tmp_path):
    from stack.settings import parse_env_file

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        env_file = tmp_path / ".env"
        ensure_env_file(env_file, REPO / ".env.example")
        values = parse_env_file(env_file) | {"STACK_HOME": str(tmp_path / "h"), "KAFKA_PORT": str(port),
                                             "POSTGRES_PORT": "1", "MINIO_PORT": "2",
                                             "MINIO_CONSOLE_PORT": "3", "AIRFLOW_PORT": "4",
                                             "KAFKA_CONTROLLER_PORT": "5", "KAFKA_INTERNAL_PORT": "6"}
        settings = load_settings(Env(values))
        with pytest.raises(install.MissingPrerequisite,
                           match=rf"port {port} on 127\.0\.0\.1 \(for kafka\) is already in use.*KAFKA_PORT"):
            manager._check_ports(settings, None)
    finally:
        listener.close()
