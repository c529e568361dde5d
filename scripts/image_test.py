"""make image-test: run the built image's own entrypoint and check it serves, reports and drains.

Runs a real container (``docker run``) when a Docker daemon answers; otherwise the image's root
filesystem through ``buildah run --isolation chroot --network host`` (no container runtime works
where pdserve is developed: ``podman run`` fails on setrlimit). Either way the command is the
image's ENTRYPOINT + CMD, its environment, user and working directory read from the image's
configuration, never the checkout's. Only the port, the host (127.0.0.1, the host's network in
chroot mode) and the drain timings (docker-compose.yml's) are set from outside.

Checks, in order: the image's configuration (non-root user, tini first) and its files (pdserve
installed in /opt/venv, not editable; no make, gcc or pip cache; the server process runs as the
image's user inside the image's root); /readyz within --ready-timeout-s; a prediction of a sample
photo against its val_list class; /metrics; then SIGTERM to the entrypoint while requests are in
flight: /readyz turns 503, every accepted request is answered 200 with the right class, and the
entrypoint exits 0 within the drain delay + graceful shutdown + 10 s (the server's own bound).
Prints a JSON summary (start-to-ready, drain) on the last line. Standard library only: it runs on
the host's python3, without the project's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
DRAIN_DELAY_S = 5.0  # docker-compose.yml's PDSERVE_DRAIN_DELAY_S
GRACEFUL_S = 20.0  # docker-compose.yml's PDSERVE_GRACEFUL_SHUTDOWN_S
WORKER_STOP_S = 10.0  # pdserve.settings.WORKER_STOP_S: workers are stopped within it after the drain
IN_FLIGHT = 6  # requests in flight when SIGTERM arrives
LATE = 2  # requests sent after SIGTERM, during the drain delay
IMAGES_PER_REQUEST = 4  # (6 + 2) x 4 = the shipped max_queue_size (32): none is refused with 429


def log(message: str) -> None:
    print(f"image-test: {message}", flush=True)


def fail(message: str) -> NoReturn:
    raise SystemExit(f"image-test FAILED: {message}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@dataclass
class ImageConfig:
    entrypoint: list[str]
    cmd: list[str]
    env: dict[str, str]
    user: str
    workdir: str


def image_config(runtime: str, image: str) -> ImageConfig:
    if runtime == "docker":
        out = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, check=True)
        config = json.loads(out.stdout)[0]["Config"]
    else:
        out = subprocess.run(
            ["buildah", "inspect", "--type", "image", image], capture_output=True, text=True, check=True
        )
        config = json.loads(out.stdout)["OCIv1"]["config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        env=env,
        user=config.get("User") or "",
        workdir=config.get("WorkingDir") or "/",
    )


class Container:
    """The image's entrypoint as one host process: docker run, or buildah run on a working container."""

    def __init__(self, runtime: str, image: str, config: ImageConfig, port: int, env: dict[str, str]) -> None:
        self.runtime, self.image, self.config, self.port, self.env = runtime, image, config, port, env
        self.name = f"pdserve-image-test-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mountpoint = ""

    def exec(self, script: str) -> str:
        """Run a shell script in the image as its own user; return stdout."""
        if self.runtime == "docker":
            command = ["docker", "run", "--rm", "--entrypoint", "sh", self.image, "-c", script]
        else:
            command = ["buildah", "run", "--isolation", "chroot", "--user", self.config.user, self.name]
            command += ["--", "sh", "-c", script]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            fail(f"{script!r} in the image: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def create(self) -> None:
        if self.runtime == "buildah":
            subprocess.run(["buildah", "from", "--name", self.name, self.image], check=True, capture_output=True)
            mount = subprocess.run(["buildah", "mount", self.name], check=True, capture_output=True, text=True)
            self.mountpoint = os.path.realpath(mount.stdout.strip())

    def start(self, log_file: Any) -> None:
        env_flags = [f for k, v in self.env.items() for f in ("--env", f"{k}={v}")]
        if self.runtime == "docker":
            command = ["docker", "run", "--name", self.name, "--shm-size", "256m"]
            command += ["-p", f"127.0.0.1:{self.port}:{self.config.env.get('PDSERVE_PORT', '8000')}", *env_flags]
            command += [self.image]
        else:
            # chroot isolation has no PID namespace: tini is not PID 1, so it registers as a child
            # subreaper (TINI_SUBREAPER) to reap the workers as PID 1 would.
            command = ["buildah", "run", "--isolation", "chroot", "--network", "host", "--user", self.config.user]
            command += ["--workingdir", self.config.workdir, "--env", "TINI_SUBREAPER=1", *env_flags]
            command += [self.name, "--", *self.config.entrypoint, *self.config.cmd]
        log("start: " + " ".join(command))
        self.proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)

    def entrypoint_pid(self) -> int:
        """The host pid of the image's entrypoint process (tini), the one a runtime signals."""
        assert self.proc is not None
        if self.runtime == "docker":
            out = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", self.name], capture_output=True)
            return int(out.stdout)
        first = self.config.entrypoint[0]
        for pid in descendants(self.proc.pid):
            argv = cmdline(pid)
            if argv and os.path.basename(argv[0]) == os.path.basename(first):
                return pid
        fail(f"no {first} process under buildah run (pid {self.proc.pid})")

    def workers(self) -> list[int]:
        """The worker processes (multiprocessing spawns) under the entrypoint."""
        return [p for p in descendants(self.entrypoint_pid()) if "spawn_main" in " ".join(cmdline(p))]

    def terminate(self) -> None:
        """SIGTERM to the entrypoint, as docker stop or the kubelet sends it."""
        os.kill(self.entrypoint_pid(), signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        if self.runtime == "docker":
            done = subprocess.run(["docker", "wait", self.name], capture_output=True, text=True, timeout=timeout)
            self.proc.wait(timeout=10)
            return int(done.stdout.strip())
        return self.proc.wait(timeout=timeout)

    def remove(self) -> None:
        """Stop whatever still runs (after a failed check): SIGTERM, then SIGKILL to the whole tree."""
        if self.proc is not None and self.proc.poll() is None:
            tree = descendants(self.proc.pid)
            try:
                self.terminate()
                self.wait(timeout=DRAIN_DELAY_S + GRACEFUL_S + WORKER_STOP_S)
            except (SystemExit, subprocess.TimeoutExpired):
                for pid in [self.proc.pid, *tree]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait()
        if self.runtime == "docker":
            subprocess.run(["docker", "rm", "-f", self.name], capture_output=True)
        else:
            subprocess.run(["buildah", "umount", self.name], capture_output=True)
            subprocess.run(["buildah", "rm", self.name], capture_output=True)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError(pid)


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def multipart(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = []
    for i, data in enumerate(images):
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.jpg"\r\n'
        parts.append(head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def sample(sample_dir: Path, index: int) -> tuple[bytes, int, str]:
    """The index-th photo of val_list.txt, its class id and label (labels.txt: 'wnid name')."""
    path, class_id = (sample_dir / "val_list.txt").read_text().splitlines()[index].split()
    label = (sample_dir / "labels.txt").read_text().splitlines()[int(class_id)].split(maxsplit=1)[1]
    return (sample_dir / path).read_bytes(), int(class_id), label


@dataclass
class Drain:
    answered: list[int] = field(default_factory=list)  # status of every in-flight request
    wrong: list[str] = field(default_factory=list)
    late: dict[str, int] = field(default_factory=dict)  # requests sent during the drain delay
    readyz_after_sigterm: int = 0
    exit_code: int | None = None
    exit_s: float = 0.0


def check_image_files(container: Container, config: ImageConfig) -> dict[str, str]:
    if config.user in ("", "0", "root"):
        fail(f"the image runs as {config.user or 'root (no USER)'}")
    if not config.entrypoint or os.path.basename(config.entrypoint[0]) != "tini":
        fail(f"the entrypoint is {config.entrypoint}, not tini first")
    script = (
        "set -e; id -u; command -v python; command -v pdserve; command -v tini;"
        " python -c 'import pdserve, sys; print(pdserve.__file__); print(sys.version.split()[0])';"
        " for t in make gcc cc g++; do command -v $t && echo BUILD-TOOL $t; done;"
        " for d in /root/.cache/pip /tmp/.cache/pip /srv/pdserve; do [ -e $d ] && echo LEFTOVER $d; done; true"
    )
    lines = container.exec(script).split()
    uid, python, pdserve, tini, package, version = lines[:6]
    extra = lines[6:]
    if uid == "0":
        fail("the image's user is root")
    if not package.startswith("/opt/venv/lib/"):
        fail(f"pdserve is imported from {package}, not installed in /opt/venv")
    if extra:
        fail(f"build tools or caches in the image: {extra}")
    return {"uid": uid, "python": python, "pdserve": pdserve, "tini": tini, "package": package, "version": version}


def check_server_process(container: Container, uid: str) -> int:
    """Every process under the entrypoint runs as the image's user, inside the image's root (chroot
    mode: its root is a bind mount of the container's, so the same files by device and inode)."""
    if container.runtime != "buildah" or container.proc is None:
        return 0
    image_python = os.stat(f"{container.mountpoint}/opt/venv/bin/python")
    inside = [p for p in descendants(container.proc.pid) if not "".join(cmdline(p)[:1]).startswith("buildah-")]
    if not any("serve" in cmdline(p) for p in inside):
        fail("no pdserve serve process under the entrypoint")
    for pid in inside:
        seen = os.stat(f"/proc/{pid}/root/opt/venv/bin/python")
        if (seen.st_dev, seen.st_ino) != (image_python.st_dev, image_python.st_ino):
            fail(f"pid {pid} ({cmdline(pid)[:2]}) does not run in the image's root filesystem")
        if str(uid_of(pid)) != uid:
            fail(f"pid {pid} ({cmdline(pid)[:2]}) runs as uid {uid_of(pid)}, not the image's {uid}")
    log(f"{len(inside)} processes (tini, server, workers) run as uid {uid} in the image's root")
    return len(inside)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="pdserve:cpu")
    parser.add_argument("--runtime", choices=["auto", "docker", "buildah"], default="auto")
    default_sample = Path(os.environ.get("PDSERVE_SAMPLE_DATA", ROOT.parent / "shared" / "data" / "imagenet-sample"))
    parser.add_argument("--sample", type=Path, default=default_sample, help="ImageNet sample (val_list.txt)")
    parser.add_argument("--ready-timeout-s", type=float, default=600.0)
    parser.add_argument("--log", type=Path, default=ROOT / "build" / "image-test.log", help="the container's output")
    args = parser.parse_args()

    runtime = args.runtime
    if runtime == "auto":
        runtime = "docker" if docker_daemon() else "buildah"
    if shutil.which(runtime) is None:
        fail(f"{runtime} not found (apt-get install -y buildah, or a Docker engine)")
    if not (args.sample / "val_list.txt").exists():
        fail(f"no ImageNet sample at {args.sample} (set PDSERVE_SAMPLE_DATA)")
    config = image_config(runtime, args.image)
    port = free_port()
    env = {
        "PDSERVE_PORT": str(port) if runtime == "buildah" else config.env.get("PDSERVE_PORT", "8000"),
        "PDSERVE_DRAIN_DELAY_S": str(DRAIN_DELAY_S),
        "PDSERVE_GRACEFUL_SHUTDOWN_S": str(GRACEFUL_S),
    }
    if runtime == "buildah":  # the host's network: bind loopback only
        env["PDSERVE_HOST"] = "127.0.0.1"
    url = f"http://127.0.0.1:{port}"
    container = Container(runtime, args.image, config, port, env)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"image": args.image, "runtime": runtime, "user": config.user}
    with args.log.open("wb") as log_file:
        try:
            container.create()
            summary["files"] = files = check_image_files(container, config)
            log(f"image: user {config.user} (uid {files['uid']}), {files['pdserve']}, package {files['package']}")
            started = time.monotonic()
            container.start(log_file)
            wait_ready(container, url, args.ready_timeout_s)
            summary["start_to_ready_s"] = round(time.monotonic() - started, 1)
            log(f"ready in {summary['start_to_ready_s']} s")
            summary["processes_checked"] = check_server_process(container, files["uid"])
            summary["prediction"] = check_prediction(url, args.sample)
            summary["metrics"] = check_metrics(url)
            drain = check_drain(container, url, args.sample)
            summary["drain"] = drain.__dict__
        finally:
            container.remove()
    log(f"container output in {args.log}")
    print(json.dumps(summary))
    return 0


def wait_ready(container: Container, url: str, timeout_s: float) -> None:
    assert container.proc is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if container.proc.poll() is not None:
            fail(f"the entrypoint exited with {container.proc.returncode} before /readyz")
        try:
            if http("GET", f"{url}/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    fail(f"/readyz not 200 within {timeout_s} s")


def check_prediction(url: str, sample_dir: Path) -> dict[str, Any]:
    photo, class_id, label = sample(sample_dir, 0)
    status, body = http("POST", f"{url}/predict", photo, {"Content-Type": "image/jpeg"})
    if status != 200:
        fail(f"/predict: {status} {body[:200]!r}")
    top = json.loads(body)["predictions"][0]
    if top["class_id"] != class_id or top["label"] != label:
        fail(f"/predict: {top}, expected class {class_id} ({label})")
    log(f"prediction: {top}")
    return {"class_id": top["class_id"], "label": top["label"], "score": top["score"]}


def check_metrics(url: str) -> dict[str, float]:
    status, body = http("GET", f"{url}/metrics")
    text = body.decode()
    found = {}
    for name in ("pdserve_requests_total", "pdserve_workers_alive", "pdserve_request_duration_seconds_count"):
        values = [
            float(v) for v in re.findall(rf'^{name}{{[^}}]*model="efficientnet_lite0"[^}}]*}} (\S+)$', text, re.M)
        ]
        if not values:
            fail(f"/metrics ({status}) has no {name} for efficientnet_lite0")
        found[name] = sum(values)
    if found["pdserve_requests_total"] < 1 or found["pdserve_workers_alive"] < 1:
        fail(f"/metrics: {found}")
    log(f"metrics: {found}")
    return found


def inflight(url: str) -> float:
    text = http("GET", f"{url}/metrics")[1].decode()
    return sum(float(v) for v in re.findall(r"^pdserve_inflight_requests{[^}]*} (\S+)$", text, re.M))


def check_drain(container: Container, url: str, sample_dir: Path) -> Drain:
    """SIGTERM with requests in flight, made deterministic: the workers are stopped (SIGSTOP) while
    the requests arrive, so none can finish before the signal; they resume (SIGCONT) once the signal
    is sent and the late requests are in, well inside the workers' hung-batch timeout (>= 5 s)."""
    photo, class_id, _ = sample(sample_dir, 0)
    body, headers = multipart([photo] * IMAGES_PER_REQUEST)
    drain = Drain()
    lock = threading.Lock()

    def send(late: str | None = None) -> None:
        try:
            status, answer = http("POST", f"{url}/models/efficientnet_lite0/predict", body, headers)
        except OSError as error:  # refused: the listener had closed, so the request was never accepted
            with lock:
                drain.wrong.append(f"{late or 'in-flight'} request failed: {error}")
            return
        with lock:
            if late is not None:
                drain.late[late] = status
            else:
                drain.answered.append(status)
            if status != 200:
                drain.wrong.append(f"{status}: {answer[:200]!r}")
                return
            got = [p["predictions"][0]["class_id"] for p in json.loads(answer)["results"]]
            if got != [class_id] * IMAGES_PER_REQUEST:
                drain.wrong.append(f"classes {got}, expected {IMAGES_PER_REQUEST} x {class_id}")

    def until_in_flight(n: int) -> None:
        deadline = time.monotonic() + 60
        while (seen := inflight(url)) < n:
            if time.monotonic() > deadline:
                fail(f"{seen:.0f} of {n} requests in flight after 60 s (answers {drain.answered} {drain.wrong})")
            time.sleep(0.05)

    workers = container.workers()
    if not workers:
        fail("no worker processes under the entrypoint")
    threads = [threading.Thread(target=send) for _ in range(IN_FLIGHT)]
    late = [threading.Thread(target=send, args=(f"late-{i}",)) for i in range(LATE)]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        for t in threads:
            t.start()
        until_in_flight(IN_FLIGHT)
        signalled = time.monotonic()
        container.terminate()
        log(f"SIGTERM to the entrypoint with {IN_FLIGHT} requests in flight ({len(workers)} workers held)")
        # During the drain delay the server still takes requests (load balancers have not yet
        # dropped it) but reports not ready.
        drain.readyz_after_sigterm = http("GET", f"{url}/readyz")[0]
        for t in late:
            t.start()
        until_in_flight(IN_FLIGHT + LATE)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    for t in threads + late:
        t.join()
    bound = DRAIN_DELAY_S + GRACEFUL_S + WORKER_STOP_S
    try:
        drain.exit_code = container.wait(timeout=bound + 30)
    except subprocess.TimeoutExpired:
        fail(f"the entrypoint did not exit within {bound + 30} s of SIGTERM")
    drain.exit_s = round(time.monotonic() - signalled, 1)
    log(f"drain: {drain}")
    if drain.readyz_after_sigterm != 503:
        fail(f"/readyz was {drain.readyz_after_sigterm} after SIGTERM, not 503")
    if drain.wrong or drain.answered != [200] * IN_FLIGHT or list(drain.late.values()) != [200] * LATE:
        fail(f"accepted requests not all answered 200: {drain.answered} {drain.late} {drain.wrong}")
    if drain.exit_code != 0 or drain.exit_s > bound:
        fail(f"exit {drain.exit_code} after {drain.exit_s} s (bound {bound} s)")
    return drain


if __name__ == "__main__":
    sys.exit(main())
