"""Profile the running pipeline's stream: where a micro-batch's time and CPU go.

Usage (the stack up, as the user who ran `make up`):
    stack/bin/stackctl python -m benchmarks.profile_stream [--seconds 120] [--out DIR] [--top 25]

For --seconds, on the `iot_stream` DAG's driver as it runs (nothing of its own is started):
- the JVM (spark-submit, where Spark, Delta, S3A and the Kafka source run): a JFR recording
  (`jcmd JFR.start`, the "profile" settings), printed as the methods with the most CPU samples,
  on top of the stack (self) and anywhere in it (inclusive, project-relevant packages);
- the PySpark driver (our foreachBatch code, py4j calls): py-spy, printed the same way;
- the object store: every S3 call MinIO served (`mc admin trace`), counted by API and by what
  it touched (a table's _delta_log or data, the checkpoint's offsets, commits, metadata),
  per micro-batch (each call is kept in s3-calls.jsonl);
- CPU seconds of the JVM and the driver, per micro-batch, from /proc, and the JVM's by thread
  (JIT compiler threads, the stream's execution thread, task threads, GC): what a batch costs
  beyond the Java code JFR samples;
- the classes the JVM loaded meanwhile: a plan whose generated code differs in every batch
  shows up as new classes every batch (and JIT work on each).
`--skip jfr,pyspy` leaves those recordings out (they cost CPU themselves); the rest is cheap.
The recordings stay in --out (default a new folder under /tmp, printed; remove it after).
py-spy comes from the venv (requirements.lock); jcmd and jfr from the JDK that runs Spark.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.soak import Probe, duration, pipeline_drivers
from common.env import Env
from common.probes import NotReady, wait_for
from stack.init import mc_root_env
from stack.settings import ENV_FILE, load_settings

LAMBDA = re.compile(r"\$+Lambda.*$")
INTERESTING = re.compile(r"^(org\.apache\.spark\.sql\.delta|io\.delta|org\.apache\.hadoop\.fs\.s3a|"
                         r"org\.apache\.spark\.sql\.execution\.streaming|org\.apache\.spark\.sql\.kafka|"
                         r"org\.apache\.kafka|org\.apache\.spark\.scheduler|org\.apache\.spark\.sql\.execution|"
                         r"org\.apache\.parquet|software\.amazon|org\.postgresql)")


def as_owner(proc: psutil.Process, cmd: list[str]) -> list[str]:
    """Run `cmd` as the owner of `proc` (the JVM's attach API wants the same user)."""
    owner = proc.username()
    if os.geteuid() == 0 and owner != "root":
        return ["runuser", "-u", owner, "--", *cmd]
    return cmd


def jdk_tool(java_exe: str, name: str) -> str:
    """Return the JDK tool `name` beside the JVM's own java."""
    tool = Path(java_exe).resolve().parent / name
    if not tool.exists():
        raise SystemExit(f"profile_stream: {tool} not found: install the JDK (Debian: openjdk-17-jdk-headless)")
    return str(tool)


def top_frames(stacks: list[list[str]], top: int, keep=None) -> tuple[list, list]:
    """Return the `top` frames by self samples and by inclusive samples (frames matching `keep`)."""
    self_counts, incl_counts = collections.Counter(), collections.Counter()
    for stack in stacks:
        if not stack:
            continue
        self_counts[stack[0]] += 1
        for frame in set(stack):
            if keep is None or keep(frame):
                incl_counts[frame] += 1
    return self_counts.most_common(top), incl_counts.most_common(top)


def jfr_stacks(jfr: str, recording: Path) -> list[list[str]]:
    """Return the execution samples of a JFR recording as stacks of method names, top first."""
    out = subprocess.run([jfr, "print", "--json", "--events", "jdk.ExecutionSample", "--stack-depth", "64",
                          str(recording)], capture_output=True, text=True, check=True).stdout
    events = json.loads(out)["recording"]["events"]
    stacks = []
    for event in events:
        frames = event["values"].get("stackTrace", {}) or {}
        stack = []
        for frame in frames.get("frames", []):
            method = frame.get("method", {})
            owner = LAMBDA.sub("", method.get("type", {}).get("name", "?")).replace("/", ".")
            stack.append(f"{owner}.{method.get('name', '?')}")
        stacks.append(stack)
    return stacks


def pyspy_stacks(collapsed: Path) -> list[list[str]]:
    """Return py-spy's collapsed stacks (root first, `;`-separated, count last) as top-first lists."""
    stacks = []
    for line in collapsed.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        stack = list(reversed(frames.split(";")))
        stacks += [stack] * int(count)
    return stacks


THREAD_NUMBER = re.compile(r"[-#\s]*\d+$")


def thread_cpu(pid: int) -> dict[str, float]:
    """Return CPU seconds per thread group of process `pid` (thread names without their number)."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups: collections.Counter = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        groups[THREAD_NUMBER.sub("", name) or name] += (int(fields[11]) + int(fields[12])) / ticks
    return dict(groups)


def loaded_classes(jvm: psutil.Process) -> int | None:
    """Return how many classes the JVM has loaded so far (jcmd VM.classloader_stats' total)."""
    jcmd = jdk_tool(jvm.exe(), "jcmd")
    out = subprocess.run(as_owner(jvm, [jcmd, str(jvm.pid), "VM.classloader_stats"]), capture_output=True,
                         text=True).stdout
    total = next((line for line in out.splitlines() if line.startswith("Total =")), None)
    return int(total.split()[3]) if total else None


def s3_category(path: str, query: str, probe: Probe) -> str:
    """Name what an S3 request touched (a LIST names its prefix in the query)."""
    prefix_param = urllib.parse.parse_qs(query).get("prefix", [""])[0]
    if prefix_param:
        path = path.rstrip("/") + "/" + prefix_param
    for name, location in (("bronze", probe.stream.bronze_path), ("quarantine", probe.stream.quarantine_path),
                           ("checkpoint", probe.stream.checkpoint)):
        prefix = "/" + location.split("://", 1)[1].rstrip("/")
        if path.startswith(prefix):
            rest = path[len(prefix):]
            if name == "checkpoint":
                part = rest.strip("/").split("/")[0] or "(root)"
                return f"checkpoint/{part}"
            return f"{name}/_delta_log" if "/_delta_log" in rest else f"{name}/data"
    return "other"


def print_table(title: str, rows: list[tuple[str, int]], total: int) -> None:
    print(f"\n{title}")
    for name, count in rows:
        print(f"  {100 * count / max(1, total):5.1f}%  {count:6d}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_stream", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=duration, default=duration("120"), help="how long to record (120)")
    parser.add_argument("--out", type=Path, default=None, help="where the recordings go (default: a new /tmp folder)")
    parser.add_argument("--top", type=int, default=25, help="lines per table (25)")
    parser.add_argument("--skip", default="", help="leave out recordings: jfr, pyspy (comma-separated)")
    args = parser.parse_args(argv)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if unknown := skip - {"jfr", "pyspy"}:
        parser.error(f"argument --skip: unknown recording(s) {', '.join(sorted(unknown))}; choose from jfr, pyspy")
    env = Env.from_file(ENV_FILE)
    s = load_settings(env)
    probe = Probe(s, env)
    drivers = pipeline_drivers(s)
    jvm = next((p for p in drivers if p.name() == "java"), None)
    python = next((p for p in drivers if "python" in p.name()), None)
    if jvm is None or python is None:
        print("profile_stream: the pipeline's stream is not running (is the iot_stream DAG on? `make status`)",
              file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="iot-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o1777)  # the JVM, which runs as the service user, writes its recording here
    recording = out / "stream.jfr"
    collapsed = out / "driver.collapsed"
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    seconds = int(args.seconds)
    print(f"profile_stream: {seconds} s of JVM pid {jvm.pid} and driver pid {python.pid}; recordings in {out}",
          flush=True)

    classes_before = loaded_classes(jvm)
    threads_before = thread_cpu(jvm.pid)
    cpu_before = {p.pid: sum(p.cpu_times()[:2]) for p in (jvm, python)}
    started = datetime.now(UTC)
    jcmd = jdk_tool(jvm.exe(), "jcmd")
    if "jfr" not in skip:
        subprocess.run(as_owner(jvm, [jcmd, str(jvm.pid), "JFR.start", "name=iot-profile", "settings=profile",
                                      f"duration={seconds}s", f"filename={recording}"]), check=True,
                       capture_output=True)
    spy = None if "pyspy" in skip else subprocess.Popen(
        [pyspy, "record", "--pid", str(python.pid), "--duration", str(seconds), "--rate", "50",
         "--format", "raw", "--output", str(collapsed), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mc_env = mc_root_env(s, out / "mc")
    trace = subprocess.Popen([str(s.gobin / "mc"), "admin", "trace", "--json", "lakehouse"], env=mc_env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    calls: collections.Counter = collections.Counter()
    server_ms: collections.Counter = collections.Counter()
    deadline = time.monotonic() + seconds
    raw_calls = (out / "s3-calls.jsonl").open("w")  # every call, to see which object a count is
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([trace.stdout], [], [], left)
        if not ready:
            continue
        line = trace.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        raw_calls.write(line)
        key = (event.get("api", "?").removeprefix("s3."),
               s3_category(event.get("path", ""), event.get("query", ""), probe))
        calls[key] += 1
        server_ms[key] += event.get("duration", 0) / 1e6
    trace.terminate()
    raw_calls.close()
    ended = datetime.now(UTC)
    cpu_after = {}
    for p in (jvm, python):
        try:
            cpu_after[p.pid] = sum(p.cpu_times()[:2])
        except psutil.NoSuchProcess:
            cpu_after[p.pid] = cpu_before[p.pid]
    threads_after = thread_cpu(jvm.pid) if jvm.is_running() else threads_before
    classes_after = loaded_classes(jvm) if jvm.is_running() else None
    spy_err = spy.communicate(timeout=seconds + 60)[1] if spy else ""
    if "jfr" not in skip:  # JFR writes its file when the recording's duration ends
        try:
            wait_for("JFR to write its recording", recording.exists, 60)
        except NotReady as exc:
            print(f"profile_stream: {exc}", file=sys.stderr)

    batches = probe.batches(started, ended)
    n = max(1, len(batches["total"]))
    print(f"\n{len(batches['total'])} micro-batches from {started:%H:%M:%S} to {ended:%H:%M:%S} UTC; "
          f"median total {sorted(batches['total'])[n // 2] if batches['total'] else 0:.0f} ms")
    for pid, name in ((jvm.pid, "JVM"), (python.pid, "PySpark driver")):
        used = cpu_after[pid] - cpu_before[pid]
        print(f"  {name:15} {used:7.1f} CPU s = {used / (ended - started).total_seconds():.3f} cores, "
              f"{used / n:.3f} CPU s per batch")

    jvm_used = cpu_after[jvm.pid] - cpu_before[jvm.pid]
    by_thread = {name: threads_after.get(name, 0.0) - threads_before.get(name, 0.0) for name in threads_after}
    ended_threads = jvm_used - sum(by_thread.values())
    print(f"\nJVM CPU by thread (CPU s per batch, share of the JVM's); threads that ended meanwhile "
          f"(task threads, mostly) {ended_threads / n:.3f} s")
    for name, used in sorted(by_thread.items(), key=lambda kv: -kv[1])[:12]:
        if used > 0:
            print(f"  {used / n:7.3f} {used / max(jvm_used, 1e-9):6.1%}  {name}")
    if classes_before is not None and classes_after is not None:
        print(f"classes loaded meanwhile: {classes_after - classes_before} ({(classes_after - classes_before) / n:.1f} "
              "per batch; generated code that differs per batch shows here)")

    total_calls = sum(calls.values())
    print(f"\nS3 calls: {total_calls} = {total_calls / n:.1f} per batch, MinIO's own time "
          f"{sum(server_ms.values()) / n:.0f} ms per batch (calls per batch, server ms per batch, API, what)")
    for (api, what), count in calls.most_common(args.top):
        print(f"  {count / n:6.2f} {server_ms[(api, what)] / n:7.1f}  {api:24} {what}")

    if "jfr" in skip:
        pass
    elif recording.exists():
        stacks = jfr_stacks(jdk_tool(jvm.exe(), "jfr"), recording)
        self_top, incl_top = top_frames(stacks, args.top, keep=lambda f: bool(INTERESTING.match(f)))
        print_table(f"JVM: {len(stacks)} CPU samples, top of stack", self_top, len(stacks))
        print_table("JVM: inclusive, Spark/Delta/S3A/Kafka/Parquet frames", incl_top, len(stacks))
    else:
        print(f"\nno JFR recording at {recording}")
    if "pyspy" in skip:
        pass
    elif collapsed.exists():
        stacks = pyspy_stacks(collapsed)
        self_top, incl_top = top_frames(stacks, args.top)
        print_table(f"PySpark driver: {len(stacks)} samples (idle included), top of stack", self_top, len(stacks))
        print_table("PySpark driver: inclusive", incl_top, len(stacks))
    else:
        print(f"\nno py-spy output: {spy_err[-500:]}")
    print(f"\nrecordings: {out} (remove it when done)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
