"""Access security on a running IOC, with clients presenting different users and addresses:
CA (caproto client with chosen user / bound source address; libca), PVA (p4p, as this OS user and,
when the tests run as root, as another one). Denied writes are refused and audited; allowed ones work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_yaml
from tests.support.models import publish_linear

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ME = __import__("getpass").getuser()


def as_client(ioc, source: str, user: str, pv: str, value: float, claimed_host: str = "console9") -> dict:
    env = {**os.environ, "EPICS_CA_ADDR_LIST": f"127.0.0.1:{ioc.ports.ca}", "EPICS_CA_AUTO_ADDR_LIST": "NO"}
    r = subprocess.run([sys.executable, "-m", "tests.support.ca_identity", source, user, claimed_host, pv, str(value)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def ioc_with(tmp_path, launch, prefix, access: str = ""):
    publish_linear(tmp_path / "store", ["a"], ["y"], [[2.0]], [0.0])
    cfg = write_yaml(tmp_path / "ioc.yaml", f"""
        ioc: {{protocols: [ca, pva]}}
        {access}
        models:
          - name: m
            prefix: "{prefix}"
            store: store
            inputs: [{{name: a, initial: 1.0}}]
            outputs: [{{name: y}}]
        """)
    return launch.ioc(cfg)


def test_default_control_pvs_are_writable_from_this_host_only(tmp_path, launch, prefix, ca):
    ioc = ioc_with(tmp_path, launch, prefix)
    local = as_client(ioc, "127.0.0.1", "anyone", f"{prefix}ENABLE", 0)
    assert local == {"read": True, "write": True, "put": "ok"}
    assert ca.get(f"{prefix}ENABLE") == 0
    remote = as_client(ioc, "127.0.0.2", "anyone", f"{prefix}ENABLE", 1, claimed_host="localhost")
    assert remote["read"] and not remote["write"]  # claiming "localhost" does not help: the address decides
    assert remote["put"] != "ok"
    assert ca.get(f"{prefix}ENABLE") == 0
    inputs = as_client(ioc, "127.0.0.2", "anyone", f"{prefix}IN:a", 3.0)
    assert inputs == {"read": True, "write": True, "put": "ok"}
    assert ca.get(f"{prefix}IN:a") == pytest.approx(3.0)
    log = ioc.output()
    assert f"put {prefix}ENABLE 1 -> 0 by anyone@127.0.0.1 (ca 127.0.0.1:" in log  # audited: who, where, what
    assert f"put {prefix}IN:a 1.0 -> 3.0 by anyone@127.0.0.2" not in log  # inputs are not control PVs


def test_listed_users_only_on_both_protocols(tmp_path, launch, prefix, ca, pva):
    ioc = ioc_with(tmp_path, launch, prefix, "access: {control: {users: [alice], hosts: [localhost]}}")
    assert as_client(ioc, "127.0.0.1", "mallory", f"{prefix}ENABLE", 0)["write"] is False
    assert as_client(ioc, "127.0.0.1", "alice", f"{prefix}ENABLE", 0)["put"] == "ok"
    assert ca.get(f"{prefix}ENABLE") == 0
    # libca presents this OS user: not alice, so no write access (caput says so)
    assert ca.pv(f"{prefix}ENABLE").write_access is False
    with pytest.raises(Exception, match=f"{ME}@127.0.0.1 may not write {prefix}ENABLE"):
        pva(ioc).put(f"{prefix}ENABLE", 1)
    assert ca.get(f"{prefix}ENABLE") == 0
    refused = [line for line in ioc.output().splitlines() if "refused" in line and "ENABLE" in line]
    assert any(f"by {ME}@127.0.0.1 (pva " in line for line in refused)


def test_acf_file_applies_to_both_protocols(tmp_path, launch, prefix, ca, pva):
    (tmp_path / "site.acf").write_text(f"""
UAG(operators) {{{ME}}}
HAG(consoles) {{localhost}}
ASG(DEFAULT) {{ RULE(1, READ) }}
ASG(INPUTS) {{ RULE(1, WRITE) }}
ASG(CONTROL) {{
    RULE(1, WRITE) {{ UAG(operators) HAG(consoles) }}
    RULE(1, READ)
}}
""")
    ioc = ioc_with(tmp_path, launch, prefix, "access: {acf: site.acf}")
    assert "access security from" in ioc.output() and "site.acf" in ioc.output()
    assert as_client(ioc, "127.0.0.1", ME, f"{prefix}ENABLE", 0)["put"] == "ok"
    assert as_client(ioc, "127.0.0.1", "someone_else", f"{prefix}ENABLE", 1)["write"] is False
    assert as_client(ioc, "127.0.0.3", ME, f"{prefix}ENABLE", 1)["write"] is False  # right user, wrong host
    assert ca.get(f"{prefix}ENABLE") == 0
    pva(ioc).put(f"{prefix}ENABLE", 1)  # this OS user, from this host: an operator
    assert ca.get(f"{prefix}ENABLE") == 1
    with pytest.raises(Exception, match="read-only"):
        pva(ioc).put(f"{prefix}OUT:y", 1.0)


def test_a_broken_access_file_refuses_to_start(tmp_path, launch, prefix):
    (tmp_path / "site.acf").write_text("ASG(CONTROL) { RULE(1, WRITE) { CALC(\"A>0\") } }\n")
    publish_linear(tmp_path / "store", ["a"], ["y"], [[2.0]], [0.0])
    cfg = write_yaml(tmp_path / "ioc.yaml", f"""
        access: {{acf: site.acf}}
        models:
          - {{name: m, prefix: "{prefix}", store: store, inputs: [{{name: a}}], outputs: [{{name: y}}]}}
        """)
    r = subprocess.run([sys.executable, "-m", "ioc", "check", str(cfg)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 1
    assert "site.acf:1: CALC() rules are not supported" in r.stderr


@pytest.mark.slow
def test_ca_record_fields_follow_the_records_read_rule(tmp_path, launch, prefix):
    """Issue 12.9: .SEVR, the limits and the units are readable exactly by those who may read the PV."""
    ioc = ioc_with(tmp_path, launch, prefix, """access:
          hosts: {consoles: [localhost]}
          groups: {DEFAULT: [{access: READ, hosts: [consoles]}], INPUTS: [{access: WRITE}]}""")
    for field in ("", ".SEVR", ".HIHI", ".EGU"):
        assert as_client(ioc, "127.0.0.1", ME, f"{prefix}OUT:y{field}", 0)["read"] is True
        assert as_client(ioc, "127.0.0.2", ME, f"{prefix}OUT:y{field}", 0)["read"] is False, field
