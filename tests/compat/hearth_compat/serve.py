# SPDX-License-Identifier: Apache-2.0
"""Starting a real `hearth serve` for the suite, and proving that it leaves nothing
behind.

Every server gets its own instance name (`hct<pid>` for the session's, a suffix for
the restart tests' extra ones), which names its host objects: network namespaces
`<instance>-r<i>`/`-g<i>`, the nftables table `inet <instance>`, the cgroup parent
`/sys/fs/cgroup/<controller>/<instance>`. It also gets its own address ranges
(--host-cidr/--transit-cidr, picked from 10.100.0.0/16 upwards among those no route of
the host and no other live test server uses), port and home
`$HEARTH_TEST_HOME/serve/<instance>`, whose `layers` is a symlink to the shared
`$HEARTH_TEST_HOME/layers`, so the Debian base layer is built once per machine.

`ServeServer.leftovers()` lists what of an instance is still on the host; after a
clean stop it must be empty.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1

CGROUP_ROOT = Path("/sys/fs/cgroup")
NETNS_DIR = Path("/run/netns")


def term_with_parent() -> None:
    """`preexec_fn` for what the suite starts: SIGTERM when pytest dies (a server
    then still shuts down cleanly, killing its sandboxes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_home() -> Path:
    return Path(os.environ.get("HEARTH_TEST_HOME", "/var/cache/hearth-test"))


def hearth_binary() -> str:
    default = Path(__file__).resolve().parents[3] / "target" / "debug" / "hearth"
    return os.environ.get("HEARTH_BINARY", str(default))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- host objects ----------------------------------------------------------------------


def netns_names() -> list[str]:
    try:
        return os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []


def netns_of(instance: str) -> list[str]:
    """Pinned network namespaces named after the instance."""
    names = netns_names()
    pattern = re.compile(rf"^{re.escape(instance)}-[rg]\d+$")
    return sorted(n for n in names if pattern.match(n))


def nft_table(instance: str) -> dict | None:
    """The instance's host table as `nft -j` reports it, or None if absent."""
    r = subprocess.run(
        ["nft", "-j", "list", "table", "inet", instance], capture_output=True, text=True
    )
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def nft_state(instance: str) -> dict[str, object]:
    """Rules (with handles stripped) and set elements of the instance's table: what
    must return to its steady state after sandboxes come and go."""
    table = nft_table(instance)
    if table is None:
        return {}
    state: dict[str, object] = {}
    for item in table.get("nftables", []):
        if "rule" in item:
            rule = dict(item["rule"])
            rule.pop("handle", None)
            state.setdefault("rules", []).append(json.dumps(rule, sort_keys=True))
        elif "set" in item:
            s = item["set"]
            state[f"set {s['name']}"] = sorted(
                json.dumps(e, sort_keys=True) for e in s.get("elem", [])
            )
    return state


def cgroup_parents(instance: str) -> list[Path]:
    """The instance's cgroup parent directories that exist (one per hierarchy)."""
    out = []
    for controller in sorted(os.listdir(CGROUP_ROOT)):
        d = CGROUP_ROOT / controller / instance
        if d.is_dir() and not (CGROUP_ROOT / controller).is_symlink():
            out.append(d)
    return out


def cgroup_children(instance: str) -> list[str]:
    """Sandbox cgroups (`<controller>/<instance>/<id>`) of the instance."""
    out = []
    for parent in cgroup_parents(instance):
        for entry in sorted(parent.iterdir()):
            if entry.is_dir():
                out.append(f"{parent.parent.name}/{instance}/{entry.name}")
    return out


def mounts_mentioning(path: Path) -> list[str]:
    """Host mounts whose mount point, source or options mention `path`."""
    text = Path("/proc/self/mountinfo").read_text()
    needle = str(path)
    return [line for line in text.splitlines() if needle in line]


def processes_of(instance: str, home: Path) -> list[str]:
    """Processes in the instance's cgroups or rooted under its home (sandbox inits
    and everything they started)."""
    out = []
    marker = f"/{instance}/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cg = Path(f"/proc/{entry}/cgroup").read_text()
            root = os.readlink(f"/proc/{entry}/root")
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        in_cgroup = any(
            line.split(":", 2)[-1].startswith(marker) for line in cg.splitlines()
        )
        if in_cgroup or root.startswith(str(home) + "/"):
            out.append(f"{entry} ({comm})")
    return out


def host_ipv4_addresses() -> list[str]:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    for line in routes.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("broadcast", "local", "unicast"):
            first = line.split()[1]
        if first == "default":
            continue
        try:
            nets.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    for addr in host_ipv4_addresses():
        nets.append(ipaddress.ip_network(addr))
    return nets


def pick_ranges() -> tuple[int, str, str]:
    """A free pair of /16s for a new server: (k, host cidr, transit cidr)."""
    used = _used_networks()
    claimed = set()
    serve_dir = test_home() / "serve"
    if serve_dir.is_dir():
        for home in serve_dir.iterdir():
            try:
                claimed.add(int((home / "ranges").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
    for k in range(0, 70):
        if k in claimed:
            continue
        host = ipaddress.ip_network(f"10.{100 + 2 * k}.0.0/16")
        transit = ipaddress.ip_network(f"10.{101 + 2 * k}.0.0/16")
        if any(n.overlaps(host) or n.overlaps(transit) for n in used):
            continue
        return k, str(host), str(transit)
    raise RuntimeError("no free 10.x.0.0/16 pair for a test server")


# --- the server ------------------------------------------------------------------------


# Which runtime test servers use (HEARTH_COMPAT_RUNTIME): `container` (default) or
# `microvm` (slow under TCG; see README for the microVM suite).
RUNTIME = os.environ.get("HEARTH_COMPAT_RUNTIME", "container")


class ServeError(AssertionError):
    """The server failed to start, to stop cleanly, or left something behind."""


class ServeServer:
    """One `hearth serve` with its own instance, home, port and address ranges."""

    def __init__(
        self,
        instance: str,
        extra_args: tuple[str, ...] = (),
        warm_slots: int = 4,
        data_gb: int = 8,
    ):
        self.instance = instance
        self.home = test_home() / "serve" / instance
        self.extra_args = extra_args
        self.warm_slots = warm_slots
        self.data_gb = data_gb
        self.port = free_port()
        self.api_key = "e2b_" + secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home.parent / f"{instance}.log"
        self.ranges: tuple[int, str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, timeout: float = 30) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"X-API-Key": self.api_key}, timeout=timeout
        )

    def sdk_opts(self) -> dict[str, str]:
        """SDK connection options aimed at this server (for servers other than the
        session's, which the environment points at)."""
        return {"api_key": self.api_key, "api_url": self.url, "sandbox_url": self.url}

    @property
    def sandboxes_dir(self) -> Path:
        """Where the server keeps sandboxes' state directories (on its data volume)."""
        return self.home / "data" / "sandboxes"

    @property
    def ifname_prefix(self) -> str:
        """The prefix of the server's host-side slot interfaces (as `hearth serve`
        derives it from the instance name)."""
        if self.instance == "hearth":
            return "hv"
        return "h" + hashlib.sha256(self.instance.encode()).hexdigest()[:6]

    def host_addr(self, slot: int) -> str:
        """The address the host reaches slot `slot` at."""
        assert self.ranges is not None
        return str(ipaddress.ip_network(self.ranges[1])[slot])

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def prepare_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        layers = self.home / "layers"
        if not layers.is_symlink():
            shared = test_home() / "layers"
            shared.mkdir(parents=True, exist_ok=True)
            layers.symlink_to(shared)
        if self.ranges is None:
            try:
                k, host, transit = (self.home / "ranges").read_text().split()
                self.ranges = (int(k), host, transit)
            except (OSError, ValueError):
                self.ranges = pick_ranges()
                (self.home / "ranges").write_text(" ".join(map(str, self.ranges)) + "\n")

    def start(self, timeout: float = 60.0) -> None:
        """Starts the server (again, with the same home, ranges and key) and waits
        until its API answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.prepare_home()
        assert self.ranges is not None
        _, host_cidr, transit_cidr = self.ranges
        argv = [
            hearth_binary(), "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--home", str(self.home),
            "--instance", self.instance,
            "--host-cidr", host_cidr,
            "--transit-cidr", transit_cidr,
            "--warm-slots", str(self.warm_slots),
            "--data-gb", str(self.data_gb),
            # Explicit: `auto` would test-boot a guest under KVM in every new home.
            "--runtime", RUNTIME,
            *self.extra_args,
        ]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HEARTH_API_KEY": self.api_key,
            "HEARTH_LOG": os.environ.get("HEARTH_SERVE_LOG", "info"),
            "NO_COLOR": "1",
        }
        if os.environ.get("HEARTH_ENVD_BINARY"):
            env["HEARTH_ENVD_BINARY"] = os.environ["HEARTH_ENVD_BINARY"]
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=term_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeError(
                    f"hearth serve exited during start-up ({self.proc.returncode}):\n"
                    f"{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        try:
            self.stop(timeout=20)
        except ServeError:
            pass
        raise ServeError(f"hearth serve did not answer in {timeout}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; returns the exit status (raises if it does not exit in time)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise ServeError(
                    f"hearth serve ignored SIGTERM for {timeout}s:\n{self.log_tail()}"
                ) from None
        return self.proc.returncode

    def kill9(self) -> None:
        """Kills the server the hard way (sandboxes keep running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def leftovers(self) -> list[str]:
        """Everything of this instance still on the host."""
        problems = []
        if ns := netns_of(self.instance):
            problems.append(f"network namespaces: {ns}")
        if nft_table(self.instance) is not None:
            problems.append(f"nftables table inet {self.instance}")
        if cg := cgroup_parents(self.instance):
            children = cgroup_children(self.instance)
            problems.append(f"cgroups: {[str(p) for p in cg]} (children: {children})")
        if m := mounts_mentioning(self.home):
            problems.append(f"mounts: {m}")
        if p := processes_of(self.instance, self.home):
            problems.append(f"processes: {p}")
        image = self.home / "data.btrfs"
        loops = subprocess.run(
            ["losetup", "--associated", str(image)], capture_output=True, text=True
        ).stdout.strip()
        if loops:
            problems.append(f"loop devices: {loops}")
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        stray = [
            name
            for line in links.splitlines()
            if (name := line.split(":")[1].strip().split("@")[0]).startswith(self.ifname_prefix)
            and name[len(self.ifname_prefix):].isdigit()
        ]
        if stray:
            problems.append(f"host interfaces: {stray}")
        if self.ranges is not None:
            prefix = self.ranges[1].rsplit(".", 2)[0] + "."
            routes = subprocess.run(
                ["ip", "-4", "route"], capture_output=True, text=True
            ).stdout
            stray = [r for r in routes.splitlines() if r.startswith(prefix)]
            if stray:
                problems.append(f"routes into {self.ranges[1]}: {stray}")
        return problems

    def settled_leftovers(self, grace: float = 5.0) -> list[str]:
        """`leftovers()` once they are gone or `grace` seconds have passed: the kernel
        detaches an auto-clearing loop device a moment after its unmount."""
        deadline = time.monotonic() + grace
        while (problems := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return problems

    def stop_and_check(self) -> None:
        """SIGTERM, then asserts a zero exit and no leftovers; removes the home."""
        code = self.stop()
        problems = [] if code == 0 else [f"exit status {code}"]
        problems += self.settled_leftovers()
        if problems:
            raise ServeError(
                f"hearth serve ({self.instance}) did not stop cleanly: "
                + "; ".join(problems)
                + f"\nlog:\n{self.log_tail()}"
            )
        self.remove_home()

    def remove_home(self) -> None:
        if mounts_mentioning(self.home):
            return
        shutil.rmtree(self.home, ignore_errors=True)
        if os.environ.get("HEARTH_COMPAT_KEEP_LOGS") != "1":
            self.log_path.unlink(missing_ok=True)


def reap_stale(prefix: str = "hct") -> list[str]:
    """Cleans up after earlier runs that died without stopping their servers: starts
    each dead run's server once more on its home (it reconciles: kills what is left,
    frees slots and cgroups) and stops it. Returns the instances handled."""
    # test_isolation.py's fake LAN of a run that died.
    for ns in netns_names():
        m = re.fullmatch(r"hctlan(\d+)", ns)
        if m and not _pid_alive(int(m.group(1))):
            subprocess.run(["ip", "link", "del", f"hl{m.group(1)}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    serve_dir = test_home() / "serve"
    if not serve_dir.is_dir():
        return []
    handled = []
    for home in sorted(serve_dir.iterdir()):
        m = re.fullmatch(rf"{prefix}(\d+)[a-z]*", home.name)
        if not home.is_dir() or not m or _pid_alive(int(m.group(1))):
            continue
        server = ServeServer(home.name)
        try:
            server.start()
            server.stop_and_check()
        except ServeError:
            server.kill9()
            continue
        handled.append(home.name)
    return handled


# --- one sandbox from the host's side --------------------------------------------------


def sandbox_pids(instance: str, sandbox_id: str) -> list[int]:
    """Host pids of every process in the sandbox (its pids cgroup)."""
    procs = CGROUP_ROOT / "pids" / instance / sandbox_id / "cgroup.procs"
    try:
        return [int(p) for p in procs.read_text().split()]
    except FileNotFoundError:
        return []


def ns_pid(pid: int) -> int | None:
    """The pid `pid` has inside its own (innermost) pid namespace."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    line = next((x for x in status.splitlines() if x.startswith("NSpid:")), None)
    return int(line.split()[-1]) if line else None


def sandbox_init_pid(instance: str, sandbox_id: str) -> int:
    """Host pid of the sandbox's PID 1 (envd)."""
    for pid in sandbox_pids(instance, sandbox_id):
        if ns_pid(pid) == 1:
            return pid
    raise AssertionError(f"sandbox {sandbox_id} has no init in its cgroup")


def qemu_pid(instance: str, sandbox_id: str) -> int:
    """Host pid of the QEMU process of a microVM sandbox (`-name <instance>-<id>`)."""
    want = f"{instance}-{sandbox_id}"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-name" and argv[i + 1].decode(errors="replace").split(",")[0] == want:
                return int(entry)
    raise AssertionError(f"microVM sandbox {sandbox_id} has no QEMU process")


def sandbox_slot(instance: str, sandbox_id: str) -> int:
    """The index of the network slot the sandbox runs in: the pinned guest namespace
    that is its init's network namespace (containers), or the router namespace its
    QEMU runs in (microVMs)."""
    if os.environ.get("HEARTH_COMPAT_RUNTIME", "container") == "microvm":
        ino = os.stat(f"/proc/{qemu_pid(instance, sandbox_id)}/ns/net").st_ino
        prefix = f"{instance}-r"
    else:
        ino = os.stat(f"/proc/{sandbox_init_pid(instance, sandbox_id)}/ns/net").st_ino
        prefix = f"{instance}-g"
    for name in netns_of(instance):
        if name.startswith(prefix) and os.stat(NETNS_DIR / name).st_ino == ino:
            return int(name[len(prefix):])
    raise AssertionError(f"sandbox {sandbox_id} is in no slot namespace of {instance}")


def processes_in_netns(path: Path) -> list[int]:
    """Host pids whose network namespace is the one pinned at `path`."""
    try:
        ino = os.stat(path).st_ino
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                    out.append(int(entry))
            except OSError:
                continue
    return out
