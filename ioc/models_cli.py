"""``mlioc models list|show|push|promote|rollback STORE``: manage a model store from the shell.

The same rules as the IOC's PVs: push validates exactly as the IOC would before anything is
published (against the config's signature when ``--config/--model`` are given, otherwise against
the manifest's own); promote and rollback move the pointers with the store lock and record who did
it in ``events.jsonl``. A running IOC picks the change up within ``ioc.store_poll_s``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import socket
import sys
import tempfile
from pathlib import Path

from ioc.core.config import InferenceConfig, InputConfig, ModelConfig, OutputConfig, TriggerConfig
from ioc.core.configfile import load_config
from ioc.core.engine import EngineError, build_model
from ioc.core.manifest import Manifest, ManifestError, parse_manifest, read_manifest
from ioc.core.store import ModelStore, StoreError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _who() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return {"user": user, "host": socket.gethostname(), "protocol": "shell"}


def _store(path: str, must_exist: bool = True) -> ModelStore:
    store = ModelStore(path)
    if must_exist and not store.exists():
        raise StoreError(f"{path} is not a model store (no versions/ directory)")
    return store


def _config_from_manifest(m: Manifest, store: Path) -> ModelConfig:
    """When no config is given, validate a version against its own declared signature."""
    return ModelConfig(name=m.model or store.name, prefix="", store=str(store), trigger=TriggerConfig("on_change"),
                       inputs=tuple(InputConfig(s.name, units=s.units, shape=s.shape) for s in m.inputs),
                       outputs=tuple(OutputConfig(s.name, units=s.units, shape=s.shape) for s in m.outputs))


def _model_config(args: argparse.Namespace, manifest: Manifest,
                  store: ModelStore) -> tuple[ModelConfig, InferenceConfig]:
    if args.config:
        cfg = load_config(args.config)
        name = args.model or (cfg.models[0].name if len(cfg.models) == 1 else None)
        if name is None:
            raise ValueError("--model is required when the config has several models")
        return cfg.model(name), cfg.ioc.inference
    return _config_from_manifest(manifest, store.root), InferenceConfig(provider="cpu")


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args.store)
    champion, challenger = store.champion(), store.challenger()
    history = store.champion_history()
    # The MLflow run id is what `mlioc reproduce RUN_ID` takes: shown whole.
    print(f"{'':2} {'version':>7}  {'created':20} {'sha256':12}  {'MLflow run (or source)':34} metrics")
    for n in store.versions():
        mark = "C " if n == champion else ("c " if n == challenger else "  ")
        try:
            m = read_manifest(store.manifest_path(n))
            prov = m.provenance
            created = str(prov.get("created_at", ""))[:19]
            logged = prov.get("mlflow")
            mlflow: dict = logged if isinstance(logged, dict) else {}
            source = str(mlflow.get("run_id") or prov.get("mlflow_run_id") or prov.get("run_id")
                         or prov.get("created_by") or "")[:34]
            metrics = prov.get("metrics", {}) or {}
            shown = ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:3] if isinstance(v, (int, float)))
            sha = m.sha256[:12]
        except ManifestError as exc:
            created, source, shown, sha = "", f"BAD MANIFEST: {exc}"[:34], "", ""
        print(f"{mark}{n:>7}  {created:20} {sha:12}  {source:34} {shown}")
    print(f"\nC champion: {champion if champion is not None else '-'}   "
          f"c challenger: {challenger if challenger is not None else '-'}   "
          f"earlier champions: {' '.join(map(str, history)) or '-'}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args.store)
    n = args.version if args.version is not None else store.champion()
    if n is None or n not in store.versions():
        print(f"error: no version {n} in {store.root}", file=sys.stderr)
        return EXIT_FAIL
    raw = json.loads(store.manifest_path(n).read_text())
    raw.pop("test_vectors", None)
    reference = raw.pop("reference", None)
    print(f"{store.root} version {n}" + (" (champion)" if n == store.champion() else "")
          + (" (challenger)" if n == store.challenger() else ""))
    print(json.dumps(raw, indent=2, sort_keys=True))
    if reference:
        print(f"reference distributions: inputs {sorted(reference.get('inputs', {}))}, "
              f"outputs {sorted(reference.get('outputs', {}))}")
    events = [e for e in store.events() if n in (e.get("to_version"), e.get("from_version"), e.get("version"))]
    if events:
        print("events:")
        for e in events:
            when = dt.datetime.fromtimestamp(e.get("time", 0)).isoformat(timespec="seconds")
            who = f" by {e['user']}@{e.get('host', '?')}" if "user" in e else ""
            print(f"  {when} {e.get('action')}: {e.get('from_version')} -> {e.get('to_version')}{who}"
                  f"  {e.get('reason', '')}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    store = _store(args.store, must_exist=False)
    onnx_path = Path(args.onnx)
    try:
        doc = json.loads(Path(args.manifest).read_text())
        manifest = parse_manifest(doc)
    except (OSError, json.JSONDecodeError, ManifestError) as exc:
        print(f"error: manifest {args.manifest}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    try:
        model_config, inference = _model_config(args, manifest, store)
        # Validate exactly as the IOC will, on the bytes that will be published.
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "model.onnx"
            staged.write_bytes(onnx_path.read_bytes())
            build_model(staged, manifest, model_config, inference, "candidate")
    except (EngineError, ValueError, KeyError, OSError) as exc:
        print(f"error: rejected: {exc}", file=sys.stderr)
        if store.exists():
            store.append_event("rejected", model=store.root.name, reason=str(exc), source=str(onnx_path), **_who())
        return EXIT_FAIL
    number = store.add_version(onnx_path, doc)
    previous = None
    if args.as_ != "none":
        previous = store.write_pointer(args.as_, number)
    store.append_event("push", model=store.root.name, to_version=number, from_version=previous,
                       pointer=args.as_, reason="mlioc models push", **_who())
    print(f"pushed {store.root} version {number}" + (f" as {args.as_}" if args.as_ != "none" else ""))
    return EXIT_OK


def cmd_promote(args: argparse.Namespace) -> int:
    store = _store(args.store)
    old, new = store.promote()
    store.append_event("promote", model=store.root.name, from_version=old, to_version=new,
                       reason="mlioc models promote", **_who())
    print(f"{store.root}: champion {old} -> {new}")
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    store = _store(args.store)
    old, new = store.rollback()
    store.append_event("rollback", model=store.root.name, from_version=old, to_version=new,
                       reason="mlioc models rollback", **_who())
    print(f"{store.root}: champion {old} -> {new}")
    return EXIT_OK


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="manage a model store: list, show, push, promote, rollback")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    q = msub.add_parser("list", help="versions with provenance; C marks the champion, c the challenger")
    q.add_argument("store", help="store directory, e.g. models/beam")
    q.set_defaults(func=run(cmd_list))
    q = msub.add_parser("show", help="one version's manifest, provenance and events (default: champion)")
    q.add_argument("store")
    q.add_argument("version", nargs="?", type=int)
    q.set_defaults(func=run(cmd_show))
    q = msub.add_parser("push", help="validate and publish an ONNX + manifest as a new version")
    q.add_argument("store")
    q.add_argument("onnx", help="model.onnx")
    q.add_argument("manifest", help="manifest.json")
    q.add_argument("--as", dest="as_", choices=("champion", "challenger", "none"), default="challenger",
                   help="pointer to set (default: challenger)")
    q.add_argument("--config", help="validate against this config's model signature")
    q.add_argument("--model", help="model name in --config")
    q.set_defaults(func=run(cmd_push))
    q = msub.add_parser("promote", help="the challenger becomes champion")
    q.add_argument("store")
    q.set_defaults(func=run(cmd_promote))
    q = msub.add_parser("rollback", help="the champion goes back to the previous champion")
    q.add_argument("store")
    q.set_defaults(func=run(cmd_rollback))


def run(fn):
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAIL

    return wrapper
