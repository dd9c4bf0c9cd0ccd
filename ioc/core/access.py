"""Access security: who may read and write which PVs, on both protocols.

Every PV belongs to an access security group (``PVSpec.asg``): ``CONTROL`` for ENABLE, ROLLBACK,
PROMOTE, RELOAD (and ACTIONS), ``INPUTS`` for writable inputs, ``DEFAULT`` for everything else. An
:class:`AccessList` decides, per group, user and host, like an EPICS IOC's access security:

* a group's rules are tried in order; any matching rule grants its access (WRITE implies READ);
* a rule with user groups (UAG) matches only those users, with host groups (HAG) only those hosts;
* a group that is not defined falls back to ``DEFAULT``; with no ``DEFAULT`` nothing is allowed.

Hosts are matched on the client's **IP address** (as pvxs does, and rsrv with ``asCheckClientIP``):
a client can claim any host name over CA, but not its address. Names in a host group are resolved to
addresses when the list is loaded. ``localhost`` means *this host*: the loopback addresses and every
address of the host's network interfaces (passed in by the caller: enumerating interfaces is I/O at
the edge), because a client on the IOC's host that finds it by broadcast connects through the host's
network address, not through loopback.

The list comes from the config's ``access:`` section or an EPICS ACF file (the common subset: UAG,
HAG, ASG with RULE(level, NONE|READ|WRITE[, TRAPWRITE]) and UAG()/HAG() inside rules; CALC/INP rules
are refused with a clear error rather than silently ignored). Pure logic apart from name resolution.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

NONE, READ, WRITE = 0, 1, 2
_LEVELS = {"NONE": NONE, "READ": READ, "WRITE": WRITE}
LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


class AccessError(Exception):
    """An access configuration that cannot be used; the message says where and why."""


def canonical_host(host: str) -> str:
    """A client address as access lists hold it: no brackets, an IPv4-mapped IPv6 address as IPv4.

    pvxs reports a client on a dual-stack socket as ``[::ffff:192.0.2.2]``; the same client over CA is
    ``192.0.2.2``. Both must match the same host group.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower().startswith("::ffff:") and "." in host:
        host = host[7:]
    return host


def host_of(peer: str) -> str:
    """The address part of a ``HOST:PORT`` peer (``1.2.3.4:5``, ``[::1]:5``), canonical."""
    if peer.startswith("["):
        return canonical_host(peer[: peer.find("]") + 1])
    if peer.count(":") == 1:
        peer = peer.rsplit(":", 1)[0]
    return canonical_host(peer)


@dataclass(frozen=True, slots=True)
class Rule:
    access: int  # NONE, READ or WRITE
    uags: tuple[str, ...] = ()
    hags: tuple[str, ...] = ()
    trapwrite: bool = False


@dataclass
class AccessList:
    """The access policy of one IOC (implements :class:`ioc.core.pvmodel.AccessPolicy`)."""

    uag: dict[str, frozenset[str]] = field(default_factory=dict)
    hag: dict[str, frozenset[str]] = field(default_factory=dict)  # resolved: addresses (and names, lower case)
    asg: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    source: str = "built-in defaults"
    # level() per (group, user, host): every client write asks; the rules do not change once built.
    _levels: dict[tuple[str, str, str], int] = field(default_factory=dict, repr=False, compare=False)

    def level(self, asg: str, user: str, host: str) -> int:
        key = (asg, user, host)
        cached = self._levels.get(key)
        if cached is None:
            if len(self._levels) >= 4096:  # bounded: clients come and go
                self._levels.clear()
            cached = self._levels[key] = self._level(asg, user, host)
        return cached

    def _level(self, asg: str, user: str, host: str) -> int:
        rules = self.asg.get(asg, self.asg.get("DEFAULT", ()))
        host = canonical_host(host)
        best = NONE
        for rule in rules:
            if rule.uags and not any(user in self.uag.get(g, ()) for g in rule.uags):
                continue
            if rule.hags and not any(_host_in(host, self.hag.get(g, frozenset())) for g in rule.hags):
                continue
            best = max(best, rule.access)
        return best

    def can_read(self, asg: str, user: str, host: str) -> bool:
        return self.level(asg, user, host) >= READ

    def can_write(self, asg: str, user: str, host: str) -> bool:
        return self.level(asg, user, host) >= WRITE

    def describe(self) -> list[str]:
        """One line per group: what an operator reads in the log at start-up."""
        out = []
        for name, rules in self.asg.items():
            parts = []
            for r in rules:
                who = " ".join(([f"users {','.join(r.uags)}"] if r.uags else [])
                               + ([f"hosts {','.join(r.hags)}"] if r.hags else [])) or "anyone"
                parts.append(f"{['NONE', 'READ', 'WRITE'][r.access]} for {who}")
            out.append(f"{name}: " + "; ".join(parts))
        return out


def _host_in(host: str, members: frozenset[str]) -> bool:
    return host in members or host.lower() in members


Resolver = Callable[[str], Iterable[str]]


def resolve(name: str) -> list[str]:
    """Addresses of a host name (and the name itself, for clients identified by name)."""
    out = {name.lower()}
    if name.lower() == "localhost":
        out.update(LOCAL_HOSTS)
    try:
        for info in socket.getaddrinfo(name, None):
            out.add(canonical_host(str(info[4][0])))
    except OSError:
        pass  # unresolvable: it can still match a client that is identified by this name
    return sorted(out)


def this_host_resolver(local_addresses: Iterable[str], resolver: Resolver = resolve) -> Resolver:
    """``resolver``, with ``localhost`` also standing for every address of this host's interfaces."""
    own = sorted({canonical_host(a) for a in local_addresses})

    def resolve_here(name: str) -> list[str]:
        found = list(resolver(name))
        return sorted({*found, *own}) if name.lower() == "localhost" else found

    return resolve_here


def _hag(hosts: Iterable[str], resolver: Resolver) -> frozenset[str]:
    members: set[str] = set()
    for h in hosts:
        members.update(resolver(h))
    return frozenset(members)


# ----------------------------------------------------------------------------- defaults


def default_access(control_users: Iterable[str] = (), control_hosts: Iterable[str] = ("localhost",),
                   resolver: Resolver = resolve) -> AccessList:
    """Inputs writable by anyone; control PVs writable only by the listed users/hosts; all readable.

    With no users listed, any user on a listed host may write the control PVs; the default host list
    is the IOC's own host (``localhost``: see :func:`this_host_resolver`), so a fresh config is safe on
    a shared network and works for a user on the IOC's host whichever address their client uses.
    """
    users = tuple(control_users)
    hosts = tuple(control_hosts)
    uag = {"control_users": frozenset(users)} if users else {}
    hag = {"control_hosts": _hag(hosts, resolver)} if hosts else {}
    control_rule = Rule(WRITE, uags=("control_users",) if users else (), hags=("control_hosts",) if hosts else ())
    return AccessList(
        uag=uag, hag=hag,
        asg={"DEFAULT": (Rule(READ),), "INPUTS": (Rule(WRITE),), "CONTROL": (control_rule, Rule(READ))},
        source="defaults (control: " + (", ".join(users) or "any user") + " on " + (", ".join(hosts) or "any host")
        + ")",
    )


# ----------------------------------------------------------------------------- YAML form


def from_mapping(raw: dict, where: str, resolver: Resolver = resolve) -> AccessList:
    """The config's ``access:`` section (already type-checked by ioc.core.config)::

        access:
          control: {users: [alice, bob], hosts: [console1]}   # shorthand for the default layout
          # or, in full (like an ACF):
          users: {operators: [alice, bob]}
          hosts: {consoles: [console1, 10.0.0.5]}
          groups:
            CONTROL: [{access: WRITE, users: [operators], hosts: [consoles]}, {access: READ}]
            INPUTS: [{access: WRITE}]
            DEFAULT: [{access: READ}]
    """
    if "groups" not in raw:
        control = raw.get("control", {}) or {}
        return default_access(control.get("users", ()), control.get("hosts", ("localhost",)), resolver)
    uag = {name: frozenset(users) for name, users in (raw.get("users") or {}).items()}
    hag = {name: _hag(hosts, resolver) for name, hosts in (raw.get("hosts") or {}).items()}
    asg: dict[str, tuple[Rule, ...]] = {}
    for name, rules in raw["groups"].items():
        parsed = []
        for i, r in enumerate(rules):
            level = _LEVELS.get(str(r.get("access", "")).upper())
            if level is None:
                raise AccessError(f"{where}: access.groups.{name}[{i}].access: expected NONE, READ or WRITE")
            for key, known in (("users", uag), ("hosts", hag)):
                for g in r.get(key, ()):
                    if g not in known:
                        raise AccessError(f"{where}: access.groups.{name}[{i}].{key}: no group named {g!r}")
            parsed.append(Rule(level, tuple(r.get("users", ())), tuple(r.get("hosts", ()))))
        asg[name] = tuple(parsed)
    return AccessList(uag=uag, hag=hag, asg=asg, source=f"{where} access section")


# ----------------------------------------------------------------------------- EPICS ACF

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z0-9_\-+:.\[\]<>;/*]+)|([(){},]))')


def _tokens(text: str, path: str) -> list[tuple[str, int]]:
    out = []
    pos = 0
    line = 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise AccessError(f"{path}:{line}: cannot read {text[pos:pos + 20]!r}")
        line += text.count("\n", pos, m.end())
        pos = m.end()
        comment, quoted, word, punct = m.groups()
        if comment:
            continue
        tok = quoted[1:-1] if quoted else (word or punct)
        if tok is not None:
            out.append((tok, line))
    return out


def parse_acf(text: str, path: str = "<acf>", resolver: Resolver = resolve) -> AccessList:
    """Parse the common subset of an EPICS access security configuration file."""
    toks = _tokens(text, path)
    i = 0

    def expect(value: str) -> None:
        nonlocal i
        if i >= len(toks) or toks[i][0] != value:
            got = toks[i][0] if i < len(toks) else "end of file"
            line = toks[i][1] if i < len(toks) else (toks[-1][1] if toks else 1)
            raise AccessError(f"{path}:{line}: expected {value!r}, got {got!r}")
        i += 1

    def name_list() -> list[str]:
        nonlocal i
        expect("{")
        names = []
        while i < len(toks) and toks[i][0] != "}":
            if toks[i][0] != ",":
                names.append(toks[i][0])
            i += 1
        expect("}")
        return names

    def paren_args() -> list[str]:
        nonlocal i
        expect("(")
        args = []
        while i < len(toks) and toks[i][0] != ")":
            if toks[i][0] != ",":
                args.append(toks[i][0])
            i += 1
        expect(")")
        return args

    uag: dict[str, frozenset[str]] = {}
    hag: dict[str, frozenset[str]] = {}
    asg: dict[str, tuple[Rule, ...]] = {}
    while i < len(toks):
        word, line = toks[i]
        i += 1
        if word == "UAG":
            (name,) = paren_args()
            uag[name] = frozenset(name_list())
        elif word == "HAG":
            (name,) = paren_args()
            hag[name] = _hag(name_list(), resolver)
        elif word == "ASG":
            (name,) = paren_args()
            expect("{")
            rules = []
            while i < len(toks) and toks[i][0] != "}":
                kw, kline = toks[i]
                i += 1
                if kw.startswith("INP"):
                    paren_args()
                    continue
                if kw != "RULE":
                    raise AccessError(f"{path}:{kline}: unsupported {kw!r} in ASG({name}) (this IOC reads UAG, "
                                      "HAG and RULE)")
                args = paren_args()
                if len(args) < 2 or args[1].upper() not in _LEVELS:
                    raise AccessError(f"{path}:{kline}: RULE needs (level, NONE|READ|WRITE)")
                level, trap = _LEVELS[args[1].upper()], any(a.upper() == "TRAPWRITE" for a in args[2:])
                uags: list[str] = []
                hags: list[str] = []
                if i < len(toks) and toks[i][0] == "{":
                    i += 1
                    while i < len(toks) and toks[i][0] != "}":
                        sub, sline = toks[i]
                        i += 1
                        if sub == "UAG":
                            uags += paren_args()
                        elif sub == "HAG":
                            hags += paren_args()
                        else:
                            raise AccessError(f"{path}:{sline}: {sub}() rules are not supported by this IOC "
                                              "(CALC conditions cannot be evaluated here)")
                    expect("}")
                for g in uags:
                    if g not in uag:
                        raise AccessError(f"{path}:{kline}: RULE refers to undefined UAG({g})")
                for g in hags:
                    if g not in hag:
                        raise AccessError(f"{path}:{kline}: RULE refers to undefined HAG({g})")
                rules.append(Rule(level, tuple(uags), tuple(hags), trap))
            expect("}")
            asg[name] = tuple(rules)
        else:
            raise AccessError(f"{path}:{line}: expected UAG, HAG or ASG, got {word!r}")
    return AccessList(uag=uag, hag=hag, asg=asg, source=path)


def build_access(settings, local_addresses: Iterable[str] = ()) -> AccessList:
    """The access list a config asks for (``ioc.core.config.AccessSettings``); AccessError if unusable.

    ``local_addresses``: this host's interface addresses, which ``localhost`` in any host list stands for
    (``ioc.edges.host.local_addresses()``).
    """
    local = tuple(local_addresses)
    resolver = this_host_resolver(local)
    if settings.acf:
        try:
            text = open(settings.acf).read()  # noqa: SIM115 - small file, read once
        except OSError as exc:
            raise AccessError(f"cannot read access security file {settings.acf}: {exc.strerror or exc}") from exc
        acl = parse_acf(text, settings.acf, resolver)
    elif settings.mapping is not None:
        acl = from_mapping(settings.mapping, "access", resolver)
    else:
        acl = default_access(resolver=resolver)
    if local:
        acl.source += f"; localhost = this host: {', '.join(sorted({*LOCAL_HOSTS[:2], *map(canonical_host, local)}))}"
    return acl
