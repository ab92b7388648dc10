# SPDX-License-Identifier: Apache-2.0
"""Smoke test of the filesystem API with the real e2b Python SDK (debug mode).

Run through fs_smoke.sh, which starts envd in a private network namespace."""
import gzip, io, os, time, uuid, httpx
from e2b import Sandbox, FileType, FilesystemEventType
from e2b.exceptions import NotFoundException, SandboxException

def check(cond, what):
    print(("PASS " if cond else "FAIL ") + what)
    if not cond:
        global failures; failures += 1
failures = 0
sbx = Sandbox.create()
f = sbx.files
home = os.environ["SMOKE_HOME"]

# write/read: text, bytes, stream, gzip
info = f.write("t/a.txt", "hello text")
check(info.path == f"{home}/t/a.txt" and info.name == "a.txt" and info.type == FileType.FILE, f"write text -> {info}")
check(f.read("t/a.txt") == "hello text", "read text")
f.write("t/b.bin", b"\x00\x01\x02bytes")
check(bytes(f.read("t/b.bin", format="bytes")) == b"\x00\x01\x02bytes", "read bytes")
big = os.urandom(3 << 20)
f.write("t/big.bin", io.BytesIO(big))  # file-like => octet-stream streamed
chunks = b"".join(f.read("t/big.bin", format="stream"))
check(chunks == big, "stream upload + stream read 3 MiB")
f.write("t/gz.txt", "gzip " * 1000, gzip=True)
check(f.read("t/gz.txt", gzip=True) == "gzip " * 1000, "gzip write + gzip read")
f.write("t/iter.bin", iter([b"a" * 10, b"b" * 10]))
check(f.read("t/iter.bin") == "a" * 10 + "b" * 10, "iterable upload")
meta = f.write("t/meta.txt", "m", metadata={"Owner": "ada"})
check(meta.metadata == {"owner": "ada"}, f"metadata on write -> {meta.metadata}")
check(f.get_info("t/meta.txt").metadata == {"owner": "ada"}, "metadata on get_info")

# write_files batch (multipart with full-path filenames)
res = f.write_files([{"path": "batch/one.txt", "data": "1"}, {"path": f"{home}/batch/sub/two.txt", "data": "2"}])
check([r.path for r in res] == [f"{home}/batch/one.txt", f"{home}/batch/sub/two.txt"], f"write_files -> {[r.path for r in res]}")
check(f.read("batch/sub/two.txt") == "2", "write_files content")

# list depth 1..3
d = f"ls_{uuid.uuid4().hex[:6]}"
f.make_dir(f"{d}/s1/s11"); f.make_dir(f"{d}/s2"); f.write(f"{d}/file1.txt", "x")
for depth, n in [(1, 3), (2, 4), (3, 4)]:
    entries = f.list(d, depth=depth)
    check(len(entries) == n, f"list depth={depth} -> {[e.name for e in entries]}")
e = f.list(d)[0]
check(e.name == "file1.txt" and e.mode == 0o644 and e.permissions == "-rw-r--r--" and e.owner == "user" and e.group == "user" and e.size == 1, f"list entry details {e}")

# get_info / exists / make_dir twice / rename / remove
gi = f.get_info(d)
check(gi.type == FileType.DIR and gi.mode == 0o755 and gi.permissions == "drwxr-xr-x", f"get_info dir {gi}")
check(f.exists(d) and not f.exists("nope/nope"), "exists")
check(f.make_dir("twice") is True and f.make_dir("twice") is False, "make_dir twice")
r = f.rename("t/a.txt", "moved/a2.txt")
check(r.path == f"{home}/moved/a2.txt" and r.type == FileType.FILE, f"rename -> {r.path}")
f.remove(d)
check(not f.exists(d), "remove recursive")
try:
    f.read("t/a.txt"); check(False, "read missing raises")
except Exception as ex:
    check(type(ex).__name__ in ("FileNotFoundException", "NotFoundException"), f"read missing raises {type(ex).__name__}")
try:
    f.get_info("nope.txt"); check(False, "get_info missing raises")
except NotFoundException:
    check(True, "get_info missing raises NotFoundException")

# symlink info
os.symlink("b.bin", f"{home}/t/link")
li = f.get_info("t/link")
check(li.type == FileType.FILE and li.symlink_target == f"{home}/t/b.bin", f"symlink info {li.type} {li.symlink_target}")

# watch: new file -> exactly 3 events
f.make_dir("wd")
h = f.watch_dir("wd")
f.write("wd/w.txt", "This file will be watched.")
time.sleep(0.3)
evs = h.get_new_events()
check(len(evs) == 3 and evs[0].type == FilesystemEventType.CREATE, f"watch new file events {[ (e.type.name, e.name) for e in evs]}")
f.write("wd/w.txt", "This file will be watched.")
time.sleep(0.3)
evs = h.get_new_events()
check(evs and evs[0].type == FilesystemEventType.WRITE and evs[0].name == "w.txt", f"watch overwrite events {[(e.type.name, e.name) for e in evs]}")
h.stop()
# recursive
f.make_dir("rw/nested")
h = f.watch_dir("rw", recursive=True)
f.write("rw/nested/x.txt", "x")
time.sleep(0.3)
evs = h.get_new_events()
check(len(evs) == 3 and evs[0].type == FilesystemEventType.CREATE and evs[0].name == "nested/x.txt", f"recursive watch {[(e.type.name, e.name) for e in evs]}")
f.make_dir("rw/later")
f.write("rw/later/y.txt", "y")
time.sleep(0.3)
names = [(e.type, e.name) for e in h.get_new_events()]
check((FilesystemEventType.CREATE, "later") in names and (FilesystemEventType.WRITE, "later/y.txt") in names, f"recursive watch new dir {names}")
h.stop()
h = f.watch_dir("wd", include_entry=True)
f.write("wd/e.txt", "entry")
time.sleep(0.3)
evs = h.get_new_events()
check(any(e.entry is not None and e.entry.name == "e.txt" for e in evs) if hasattr(evs[0], "entry") else True, f"include_entry")
h.stop()
try:
    f.watch_dir("t/b.bin"); check(False, "watch file raises")
except SandboxException as ex:
    check(True, f"watch of a file raises {type(ex).__name__}")
try:
    f.watch_dir("no_such_dir"); check(False, "watch missing raises")
except NotFoundException:
    check(True, "watch missing raises NotFoundException")

# signed URLs with an access token set via /init
base = "http://localhost:49983"
httpx.post(f"{base}/init", json={"accessToken": "smoke-token"}).raise_for_status()
sbx._SandboxBase__envd_access_token = "smoke-token"
url = sbx.download_url("t/b.bin")
check("signature=v1_" in url, f"download_url {url}")
r = httpx.get(url)
check(r.status_code == 200 and r.content == b"\x00\x01\x02bytes", f"signed download {r.status_code}")
url = sbx.download_url("t/b.bin", use_signature_expiration=60)
check(httpx.get(url).status_code == 200, "signed download with expiration")
up = sbx.upload_url("signed/up.txt")
r = httpx.post(up, files={"file": ("up.txt", b"signed upload")})
check(r.status_code == 200 and r.json()[0]["path"] == f"{home}/signed/up.txt", f"signed upload {r.status_code} {r.text}")
r = httpx.get(url.replace("signature=v1_", "signature=v1_x"))
check(r.status_code == 401, f"tampered signature {r.status_code} {r.text}")
r = httpx.get(f"{base}/files", params={"path": "t/b.bin"})
check(r.status_code == 401, f"no token no signature {r.status_code}")
httpx.post(f"{base}/init", json={"accessToken": ""}, headers={"X-Access-Token": "smoke-token"}).raise_for_status()
sbx._SandboxBase__envd_access_token = None
check(f.read("signed/up.txt") == "signed upload", "token cleared, signed upload content")
print("FAILURES", failures)
raise SystemExit(1 if failures else 0)
