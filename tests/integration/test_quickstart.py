"""The README quick start, as written (issue 19, "Done when"): `scripts/demo` on a copy of this checkout,
the simulator and the IOC on the standard EPICS ports, found by broadcast with the default address
lists, and every command of the README's quick-start block run as a user types it, with `mlioc get`,
`put` and `monitor`. Then Ctrl-C, a training push, and `git status`: the demo leaves the checkout
as committed (19.6) and its log holds no error or traceback (19.3).

It needs a network of its own: the standard ports and broadcasts must not meet the other IOCs that
tests (and other people) run on this host. So it runs in a private network namespace (root,
`unshare`, `ip`), with loopback and one Ethernet-like interface whose address, 192.0.2.2, is "this
host's address": a client that finds the IOC by broadcast connects from it, as on a real host (19.1).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.demo import shipped_champion
from tests.support.procs import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
HOST_ADDRESS = "192.0.2.2"
NETWORK = f"""
set -e
ip link set lo up
ip link add veth0 type veth peer name veth1
ip addr add {HOST_ADDRESS}/24 brd + dev veth0
ip link set veth0 up
ip link set veth1 up
ip route add default dev veth0
echo ready
exec sleep 3600
"""
BAD = (" ERROR ", "Traceback", "WARN pvxs", "exception was never retrieved", "Task was destroyed")


class Namespace:
    """A private network namespace, held open by a sleeping process; commands enter it with nsenter."""

    def __init__(self) -> None:
        for tool in ("unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                pytest.skip(f"the quick-start test needs {tool} (a private network namespace for the standard ports)")
        if os.geteuid() != 0:
            pytest.skip("the quick-start test needs root for a private network namespace (standard EPICS ports)")
        self.anchor = subprocess.Popen(["unshare", "-n", "sh", "-c", NETWORK], stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
        first = self.anchor.stdout.readline().strip()
        if first != "ready":
            self.close()
            pytest.skip(f"cannot make a private network namespace here: {first}")

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.anchor.pid}/ns/net", "--", *argv]

    def close(self) -> None:
        self.anchor.kill()
        self.anchor.wait(10)


def checkout_copy(dest: Path) -> Path:
    """This checkout's files (committed or not, never ignored ones) as a fresh repository at ``dest``, with
    its ``.venv`` pointing at the environment running the tests."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "the checkout under test"], cwd=dest, check=True)
    (dest / ".venv").symlink_to(Path(sys.executable).parent.parent)
    return dest


def quickstart_commands() -> list[str]:
    """The command lines of the README's block "With the demo running, in another terminal"."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"With the demo running.*?```bash\n(.*?)```", text, re.S)
    assert block, "README: no quick-start block after 'With the demo running'"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture
def user(tmp_path):
    """A user at a shell on the IOC's host: the checkout's .venv on PATH, no EPICS_* variables at all."""
    ns = Namespace()
    repo = checkout_copy(tmp_path / "checkout")
    env = {"PATH": f"{repo}/.venv/bin:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "LANG": "C.UTF-8", "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1",
           "MLIOC_SETUP": "skip"}  # the environment is this test run's: scripts/setup must not reinstall it
    yield ns, repo, env
    ns.close()


def test_the_readme_quick_start_as_written(user):
    ns, repo, env = user
    demo = ServerProcess([], env, "demo", cwd=repo, command=ns.argv([str(repo / "scripts" / "demo")]),
                         new_session=True)
    demo.start()
    try:
        serving = f"-> OK: serving v{shipped_champion()}"
        demo.wait_for_line(serving, timeout=120)
        startup = demo.output().split(serving)[0]  # a normal start: nothing to worry an operator
        assert " WARNING " not in startup and " ERROR " not in startup, startup

        def run(command: str) -> subprocess.CompletedProcess:
            r = subprocess.run(ns.argv(shlex.split(command)), cwd=repo, env=env, capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, f"{command!r} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
            return r

        def watch(name: str, until, timeout: float = 30.0) -> str:
            """``mlioc monitor NAME`` until a line satisfies ``until``; then Ctrl-C, which must exit 0."""
            mon = subprocess.Popen(ns.argv(["mlioc", "monitor", name]), cwd=repo, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline, seen = time.monotonic() + timeout, []
            try:
                while time.monotonic() < deadline:
                    line = mon.stdout.readline()
                    seen.append(line)
                    if line.startswith(name) and until(line):
                        mon.send_signal(signal.SIGINT)
                        assert mon.wait(30) == 0
                        return line
                raise AssertionError(f"{name}: no matching update in {timeout} s: {seen[-5:]}")
            finally:
                mon.kill()

        sigma = "DEMO:BEAM:OUT:sigma_x"
        for command in quickstart_commands():
            if command.startswith("mlioc monitor"):
                (name,) = shlex.split(command)[2:]
                line = watch(name, lambda line: " mm " in line)
                assert re.search(r" mm  (NO_ALARM|MINOR|MAJOR)", line), line
                continue
            r = run(command)
            if command.startswith("mlioc pvs"):
                assert sigma in r.stdout.split()
            elif command.startswith("mlioc get DEMO:BEAM:OUT:sigma_x DEMO:BEAM:STATUS"):
                out, status, champion = r.stdout.splitlines()
                assert re.match(rf"{sigma}\s+\d+\.\d{{3}} mm  (NO_ALARM|MINOR HIGH|MAJOR HIHI)  20\d\d-", out), out
                assert status.split()[1] == "OK" and champion.split()[1] == str(shipped_champion())
            elif command == "mlioc put SIM:Q1:I_SP 8":  # sigma_x rises past HIGH
                watch(sigma, lambda line: " MINOR " in line or " MAJOR " in line)
            elif command.startswith("mlioc get --pva"):
                assert r.stdout.startswith(sigma) and " mm  " in r.stdout
            elif command == "mlioc put SIM:FAULT 1":  # the machine stalls: outputs INVALID
                watch(sigma, lambda line: " INVALID " in line)
            elif command == "mlioc put SIM:FAULT 0":
                watch(sigma, lambda line: " INVALID " not in line)
            elif command == "mlioc put DEMO:BEAM:ENABLE 0":  # allowed: the user is on the IOC's host
                assert r.stdout.splitlines()[1].startswith("New : DEMO:BEAM:ENABLE  Disabled")
                assert run("mlioc get DEMO:BEAM:STATUS").stdout.split()[1] == "DISABLED"
        # ... through the host's network address, as found by broadcast: not loopback
        assert f"put DEMO:BEAM:ENABLE 1 -> 0 by root@{HOST_ADDRESS} (ca " in demo.output()
    finally:
        demo.signal_group(signal.SIGINT)  # Ctrl-C stops both
        demo.proc.wait(30)
    bad = [line for line in demo.output().splitlines() if any(b in line for b in BAD)]
    assert bad == [], demo.output()

    # The ML engineer's next step: a training push. Everything goes to the demo's working store.
    trained = subprocess.run([sys.executable, "-c", "import torch, mlflow"], capture_output=True).returncode == 0
    if trained:
        r = subprocess.run(["mlioc", "train", "config/demo.yaml", "--model", "beam", "--push", "--epochs", "3",
                            "--no-progress"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout
    assert status == "", f"the demo left the checkout changed:\n{status}"
    events = (repo / "data" / "store" / "beam" / "events.jsonl").read_text()  # ... its working store did
    assert '"action": "load"' in events
    assert not trained or '"action": "push"' in events or '"action": "rejected"' in events
