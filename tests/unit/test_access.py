"""Access lists, from the config's shorthand, its full form, and EPICS ACF files."""

from __future__ import annotations

import pytest

from ioc.core.access import AccessError, default_access, from_mapping, parse_acf


def fake_resolver(name: str) -> list[str]:
    table = {"console1": ["10.0.0.1"], "localhost": ["127.0.0.1", "::1"]}
    return sorted({name.lower(), *table.get(name.lower(), [])})


def test_defaults_inputs_open_control_only_from_listed_hosts():
    acl = default_access(resolver=fake_resolver)
    assert acl.can_write("INPUTS", "anyone", "10.9.9.9")
    assert acl.can_write("CONTROL", "anyone", "127.0.0.1")
    assert not acl.can_write("CONTROL", "anyone", "10.9.9.9")
    assert acl.can_read("CONTROL", "anyone", "10.9.9.9")
    assert not acl.can_write("DEFAULT", "anyone", "127.0.0.1") and acl.can_read("DEFAULT", "x", "y")
    assert not acl.can_write("UNKNOWN_GROUP", "x", "127.0.0.1")  # falls back to DEFAULT: read only


def test_shorthand_users_and_hosts():
    acl = from_mapping({"control": {"users": ["alice", "bob"], "hosts": ["console1"]}}, "c.yaml", fake_resolver)
    assert acl.can_write("CONTROL", "alice", "10.0.0.1")
    assert not acl.can_write("CONTROL", "mallory", "10.0.0.1")
    assert not acl.can_write("CONTROL", "alice", "10.0.0.2")  # right user, wrong host
    assert acl.can_write("CONTROL", "alice", "console1")  # a client identified by name


def test_full_form_rules_and_errors():
    raw = {"users": {"ops": ["alice"]}, "hosts": {"cr": ["console1"]},
           "groups": {"CONTROL": [{"access": "WRITE", "users": ["ops"], "hosts": ["cr"]}, {"access": "READ"}],
                      "INPUTS": [{"access": "WRITE", "hosts": ["cr"]}], "DEFAULT": [{"access": "READ"}]}}
    acl = from_mapping(raw, "c.yaml", fake_resolver)
    assert acl.can_write("CONTROL", "alice", "10.0.0.1") and not acl.can_write("CONTROL", "bob", "10.0.0.1")
    assert acl.can_write("INPUTS", "bob", "10.0.0.1") and not acl.can_write("INPUTS", "bob", "10.0.0.7")
    raw["groups"]["CONTROL"][0]["users"] = ["nobody_group"]
    with pytest.raises(AccessError, match="no group named 'nobody_group'"):
        from_mapping(raw, "c.yaml", fake_resolver)


ACF = """
# site access security
UAG(operators) {alice, bob}
UAG(experts) {carol}
HAG(consoles) {console1, "10.0.0.5"}

ASG(DEFAULT) {
    RULE(1, READ)
}
ASG(CONTROL) {
    RULE(1, WRITE, TRAPWRITE) {
        UAG(operators, experts)
        HAG(consoles)
    }
    RULE(1, READ)
}
ASG(INPUTS) {
    RULE(1, WRITE)
}
"""


def test_acf_subset():
    acl = parse_acf(ACF, "site.acf", fake_resolver)
    assert acl.can_write("CONTROL", "carol", "10.0.0.5")
    assert acl.can_write("CONTROL", "bob", "10.0.0.1")
    assert not acl.can_write("CONTROL", "bob", "10.0.0.99")
    assert not acl.can_write("CONTROL", "eve", "10.0.0.1")
    assert acl.can_read("CONTROL", "eve", "10.0.0.99")
    assert acl.can_write("INPUTS", "eve", "10.0.0.99")
    assert acl.asg["CONTROL"][0].trapwrite
    assert any("CONTROL: WRITE for users operators,experts hosts consoles" in line for line in acl.describe())


@pytest.mark.parametrize(("text", "message"), [
    ("ASG(X) { RULE(1, WRITE) { CALC(\"A>1\") } }", "CALC() rules are not supported"),
    ("ASG(X) { RULE(1, WRITE) { UAG(missing) } }", "undefined UAG(missing)"),
    ("ASG(X) { RULE(1, MAYBE) }", "RULE needs (level, NONE|READ|WRITE)"),
    ("UAG(a) {x}\nBOGUS(b)", "site.acf:2: expected UAG, HAG or ASG, got 'BOGUS'"),
    ("ASG(X) { RULE(1, READ) ", "expected '}'"),
])
def test_acf_errors_say_where(text, message):
    with pytest.raises(AccessError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        parse_acf(text, "site.acf", fake_resolver)


# ----------------------------------------------------------------------------- this host (issue 19.1)


def test_localhost_is_every_address_of_this_host_in_defaults_acf_and_yaml():
    from ioc.core.access import build_access
    from ioc.core.config import AccessSettings

    here = ["192.0.2.2", "fd00::2"]
    for settings in (AccessSettings(), AccessSettings(mapping={"control": {"hosts": ["localhost"]}})):
        acl = build_access(settings, here)
        assert acl.can_write("CONTROL", "anyone", "192.0.2.2")  # a client that found the IOC by broadcast
        assert acl.can_write("CONTROL", "anyone", "fd00::2") and acl.can_write("CONTROL", "anyone", "127.0.0.1")
        assert not acl.can_write("CONTROL", "anyone", "192.0.2.3")  # another host on the same network
        assert "localhost = this host: 127.0.0.1, 192.0.2.2, ::1, fd00::2" in acl.source
    assert not build_access(AccessSettings(), ()).can_write("CONTROL", "anyone", "192.0.2.2")


def test_pva_peers_are_matched_like_ca_clients():
    from ioc.core.access import canonical_host, host_of

    assert host_of("[::ffff:192.0.2.2]:50202") == "192.0.2.2"  # pvxs on a dual-stack socket
    assert host_of("192.0.2.2:50122") == "192.0.2.2" and host_of("[::1]:5075") == "::1"
    assert canonical_host("[fd00::2]") == "fd00::2" and canonical_host("::ffff:127.0.0.1") == "127.0.0.1"
    acl = default_access(resolver=fake_resolver)
    assert acl.can_write("CONTROL", "anyone", "[::ffff:127.0.0.1]")
    assert not acl.can_write("CONTROL", "anyone", "[::ffff:10.9.9.9]")
