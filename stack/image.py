"""Build steps of the Docker image (docker/Dockerfile), with the local stack's own code.

    python -m stack.image prune-jars DIR     drop from DIR the jars the pyspark wheel ships
    python -m stack.image spark-defaults OUT write spark-defaults.conf (no secrets) to OUT,
                                             and Spark's log4j2.properties beside it

The image gets the same jar set and the same Spark settings as `make up` writes locally; the
runtime values (endpoints, keys) come from the container's environment when a job starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from common.env import Env
from stack.install import drop_jars_shipped_by
from stack.services import write_spark_conf_dir


def pyspark_jars() -> list[Path]:
    """Return the jars of the installed pyspark wheel, without importing it."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise SystemExit("stack.image: pyspark is not installed in this interpreter")
    return sorted((Path(spec.origin).parent / "jars").glob("*.jar"))


def main(argv: list[str] | None = None) -> int:
    """Run one build step; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stack.image", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    prune = sub.add_parser("prune-jars", help="drop the jars the pyspark wheel already ships")
    prune.add_argument("directory", type=Path)
    defaults = sub.add_parser("spark-defaults", help="write spark-defaults.conf without secrets")
    defaults.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    if args.step == "prune-jars":
        if not args.directory.is_dir():
            parser.error(f"argument directory: {args.directory} is not a directory")
        dropped = drop_jars_shipped_by(pyspark_jars(), args.directory)
        print(f"dropped {len(dropped)} jars pyspark already ships", file=sys.stderr)
    else:
        if args.output.name != "spark-defaults.conf":
            parser.error(f"argument output: must be a SPARK_CONF_DIR's spark-defaults.conf, got {args.output}")
        write_spark_conf_dir(args.output.parent, Env())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
