# SPDX-License-Identifier: Apache-2.0
"""Starting the real static hearth-envd as PID 1 of an isolated root, and proving
that stopping it leaves nothing behind.

Each instance gets a fresh overlayfs root (the cached layers as lower directories,
upper and work directories in a temp dir) inside new mount, pid and uts namespaces:

    unshare --mount --pid --uts --fork --propagation private --kill-child -- sh -c \
        'mount -t overlay ... && hostname hearth && exec chroot <merged> /usr/bin/hearth-envd'

so envd is PID 1 of its pid namespace and mounts /proc, /dev, … itself. The overlay
mount exists only in the private mount namespace, so it disappears with envd. The
network namespace is the caller's (tests/compat/run runs the whole session in a
private one), which is where the SDK's debug mode finds envd on localhost:49983.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ENVD_PORT = 49983

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If pytest itself is killed, unshare gets SIGKILL and --kill-child takes envd
    # (and with it the whole pid namespace) along.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _processes_in_namespace(ns_link: str, kind: str = "pid") -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/{kind}") == ns_link:
                found.append(int(entry))
        except OSError:
            continue
    return found


def _mounts_below(path: Path) -> list[str]:
    prefix = str(path)
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split(" ")[4].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            out.append(mount_point)
    return out


def _describe(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
        return "gone"
    return f"state {state}, ppid {ppid}: {cmdline}"


class LeakError(AssertionError):
    """Stopping envd left a process, namespace, mount or file behind."""


class EnvdInstance:
    """One envd in one fresh isolated root."""

    def __init__(self, layers: list[str], extra_args: tuple[str, ...] = ()):
        self.layers = layers
        self.extra_args = extra_args
        self.tmp: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.envd_pid: int | None = None
        self.pid_ns: str | None = None
        self.mnt_ns: str | None = None
        self.log_path: Path | None = None
        self._ns_fds: list[int] = []

    @property
    def merged(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "merged"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{ENVD_PORT}"

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self, timeout: float = 15.0) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hearth-compat-"))
        for d in ("upper", "work", "merged"):
            (self.tmp / d).mkdir()
        self.log_path = self.tmp.parent / f"{self.tmp.name}.log"
        lowerdir = ":".join(self.layers)
        args = " ".join(f"'{a}'" for a in self.extra_args)
        script = (
            f"mount -t overlay overlay -o lowerdir={lowerdir},upperdir={self.tmp}/upper,"
            f"workdir={self.tmp}/work {self.merged} && hostname hearth && "
            f"exec chroot {self.merged} /usr/bin/hearth-envd {args}"
        )
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HEARTH_ENVD_LOG": os.environ.get("HEARTH_ENVD_LOG", "debug"),
        }
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "unshare", "--mount", "--pid", "--uts", "--fork",
                    "--propagation", "private", "--kill-child", "--",
                    "sh", "-c", script,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._cleanup_after_failed_start()
                raise RuntimeError(
                    f"envd exited during start-up ({self.proc.returncode}):\n{self.log_tail()}"
                )
            if self.envd_pid is None:
                kids = _children(self.proc.pid)
                if kids:
                    self.envd_pid = kids[0]
            if self.envd_pid is not None and self._healthy():
                self.pid_ns = os.readlink(f"/proc/{self.envd_pid}/ns/pid")
                self.mnt_ns = os.readlink(f"/proc/{self.envd_pid}/ns/mnt")
                # Namespace ids are inode numbers the kernel recycles as soon as a
                # namespace is freed; holding the namespaces open until stop() has
                # checked them keeps a parallel run's new namespace from taking the
                # same id and being mistaken for a leak.
                self._ns_fds = [
                    os.open(f"/proc/{self.envd_pid}/ns/{kind}", os.O_RDONLY)
                    for kind in ("pid", "mnt")
                ]
                return
            time.sleep(0.02)
        self.stop(check=False)
        raise RuntimeError(f"envd did not become healthy in {timeout}s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=0.5).status_code == 204
        except httpx.HTTPError:
            return False

    def _cleanup_after_failed_start(self) -> None:
        if self.tmp is not None and not _mounts_below(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def nsenter(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs a host command inside envd's mount namespace (paths are host paths,
        so the sandbox root is `self.merged`)."""
        assert self.envd_pid is not None
        return subprocess.run(
            ["nsenter", "--target", str(self.envd_pid), "--mount", "--", *argv],
            check=check,
            capture_output=True,
            text=True,
        )

    def mount_tmpfs(self, sandbox_path: str, size: str) -> None:
        """Mounts a size-limited tmpfs at `sandbox_path` inside the sandbox root."""
        target = f"{self.merged}/{sandbox_path.lstrip('/')}"
        self.nsenter("mkdir", "-p", target)
        self.nsenter("mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", target)

    def stop(self, check: bool = True, grace: float = 5.0) -> list[str]:
        """Stops envd (SIGTERM, then SIGKILL after `grace` seconds) and verifies that
        its processes, namespaces, overlay mount and temp directory are all gone.

        Returns the problems found; raises LeakError for them when `check` is set.
        """
        problems: list[str] = []
        if self.proc is not None:
            if self.envd_pid is not None and _pid_alive(self.envd_pid):
                try:
                    os.kill(self.envd_pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass  # it died (and was reaped) since the check
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    problems.append(f"envd ignored SIGTERM for {grace}s; killed it")
            if self.proc.poll() is None:
                # Killing a pid namespace's init kills everything in it.
                if self.envd_pid is not None:
                    try:
                        os.kill(self.envd_pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.kill()
                self.proc.wait(timeout=10)
        # The namespaces vanish with their last process; give the kernel a moment
        # (generous: the machine may be busy) to finish killing and reaping them.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = []
            if self.pid_ns:
                left += _processes_in_namespace(self.pid_ns, "pid")
            if self.mnt_ns:
                left += _processes_in_namespace(self.mnt_ns, "mnt")
            if not left:
                break
            time.sleep(0.05)
        else:
            described = [f"{pid} ({_describe(pid)})" for pid in sorted(set(left))]
            problems.append(f"processes still in envd's namespaces: {described}")
        # With no process left, dropping the last references frees both namespaces
        # and, with the mount namespace, the overlay mount.
        for fd in self._ns_fds:
            os.close(fd)
        self._ns_fds = []
        if self.tmp is not None:
            mounts = _mounts_below(self.tmp)
            if mounts:
                problems.append(f"mounts left on the host: {mounts}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
                if self.tmp.exists():
                    problems.append(f"temp dir {self.tmp} could not be removed")
        if self.log_path is not None and not problems:
            self.log_path.unlink(missing_ok=True)
        self.proc = None
        if problems and check:
            raise LeakError("; ".join(problems) + f"\nenvd log:\n{self.log_tail()}")
        return problems
