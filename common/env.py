"""Environment loading shared by every process of the project.

Configuration comes from the process environment, then from the repository's `.env` file
(created by `make up` from `.env.example`). Nothing here has a default for a secret: a
missing secret is an error that names the variable.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class MissingSetting(RuntimeError):
    """A required configuration variable is not set."""

    def __init__(self, name: str, hint: str = "") -> None:
        self.name = name
        message = f"{name} is not set: put it in the environment or in .env (see .env.example)"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


def parse_env_file(path: Path) -> dict[str, str]:
    """Return the KEY=value pairs of a dotenv file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{path}:{lineno}: expected KEY=value, got {raw!r}")
        value = value.strip()
        if value[:1] in {"'", '"'}:
            parts = shlex.split(value)
            value = parts[0] if parts else ""
        values[key.strip()] = value
    return values


def load_environment(env_file: Path | None = None) -> dict[str, str]:
    """Return `.env` overlaid with the process environment (the environment wins)."""
    path = env_file or Path(os.environ.get("IOT_ENV_FILE", REPO_ROOT / ".env"))
    merged: dict[str, str] = parse_env_file(path) if path.is_file() else {}
    merged.update(os.environ)
    return merged


class Env:
    """Typed accessors over a mapping of configuration variables."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values) if values is not None else load_environment()

    def get(self, name: str, default: str) -> str:
        """Return the variable, or `default` when it is unset or empty."""
        value = self._values.get(name, "")
        return value if value != "" else default

    def require(self, name: str, hint: str = "") -> str:
        """Return the variable; raise MissingSetting naming it when unset or empty."""
        value = self._values.get(name, "")
        if value == "":
            raise MissingSetting(name, hint)
        return value

    def get_int(self, name: str, default: int) -> int:
        """Return the variable as an int; a non-integer value is an error naming it."""
        raw = self.get(name, str(default))
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None

    def get_float(self, name: str, default: float) -> float:
        """Return the variable as a float; a non-number is an error naming it."""
        raw = self.get(name, str(default))
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None

    def get_bool(self, name: str, default: bool) -> bool:
        """Return the variable as a bool (true/false/1/0/yes/no)."""
        raw = self.get(name, "true" if default else "false").lower()
        if raw in {"1", "true", "yes", "on"}:
            return True
        if raw in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"{name} must be true or false, got {raw!r}")

    def as_dict(self) -> dict[str, str]:
        """Return a copy of every variable."""
        return dict(self._values)
