# SPDX-License-Identifier: Apache-2.0
"""Root versus `user`: identity, groups, ownership of what each creates, `~` and
relative paths, and sudo."""

from __future__ import annotations

import pytest
from e2b import Sandbox


def test_default_user_is_user(sandbox: Sandbox):
    assert sandbox.commands.run("whoami").stdout == "user\n"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("user", "uid=1000(user) gid=1000(user) groups=1000(user),27(sudo)"),
        ("root", "uid=0(root) gid=0(root) groups=0(root)"),
    ],
)
def test_id_of_each_user(sandbox: Sandbox, user: str, expected: str):
    assert sandbox.commands.run("whoami", user=user).stdout == f"{user}\n"
    assert sandbox.commands.run("id", user=user).stdout == expected + "\n"


@pytest.mark.parametrize(("user", "home"), [("user", "/home/user"), ("root", "/root")])
def test_processes_start_in_the_users_home(sandbox: Sandbox, user: str, home: str):
    assert sandbox.commands.run("pwd", user=user).stdout == f"{home}\n"
    assert sandbox.commands.run("echo ~", user=user).stdout == f"{home}\n"


@pytest.mark.parametrize("user", ["user", "root"])
def test_files_written_belong_to_the_writer(sandbox: Sandbox, user: str, name: str):
    info = sandbox.files.write(f"/tmp/{name}/{user}/f.txt", "x", user=user)
    assert info.path == f"/tmp/{name}/{user}/f.txt"
    entry = sandbox.files.get_info(f"/tmp/{name}/{user}/f.txt")
    assert (entry.owner, entry.group) == (user, user)
    assert sandbox.files.get_info(f"/tmp/{name}/{user}").owner == user


@pytest.mark.parametrize("user", ["user", "root"])
def test_directories_made_belong_to_the_maker(sandbox: Sandbox, user: str, name: str):
    sandbox.files.make_dir(f"/tmp/{name}-{user}/a/b", user=user)
    for path in (f"/tmp/{name}-{user}/a", f"/tmp/{name}-{user}/a/b"):
        entry = sandbox.files.get_info(path)
        assert (entry.owner, entry.group) == (user, user)
        assert entry.mode & 0o777 == 0o755


@pytest.mark.parametrize("user", ["user", "root"])
def test_files_made_by_commands_use_umask_022(sandbox: Sandbox, user: str, name: str):
    sandbox.commands.run(f"touch /tmp/{name}-{user} && mkdir /tmp/{name}-{user}.d", user=user)
    f = sandbox.files.get_info(f"/tmp/{name}-{user}")
    d = sandbox.files.get_info(f"/tmp/{name}-{user}.d")
    assert (f.owner, f.permissions) == (user, "-rw-r--r--")
    assert (d.owner, d.permissions) == (user, "drwxr-xr-x")


def test_relative_paths_resolve_per_user(sandbox: Sandbox, name: str):
    sandbox.files.write(f"{name}.txt", "mine", user="user")
    sandbox.files.write(f"{name}.txt", "roots", user="root")
    assert sandbox.commands.run(f"cat /home/user/{name}.txt").stdout == "mine"
    assert sandbox.commands.run(f"cat /root/{name}.txt", user="root").stdout == "roots"
    assert sandbox.files.read(f"~/{name}.txt", user="root") == "roots"


def test_sudo_works_for_user_without_password(sandbox: Sandbox):
    result = sandbox.commands.run("sudo -n whoami && sudo -n id -u", user="user")
    assert result.stdout == "root\n0\n"
    assert "unable to resolve host" not in result.stderr


def test_processes_see_the_users_groups(sandbox: Sandbox):
    assert sandbox.commands.run("id -Gn", user="user").stdout == "user sudo\n"
