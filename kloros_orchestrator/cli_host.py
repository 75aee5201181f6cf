"""Command line: ``apply``, ``rollback``, ``verify``, ``export`` (README, "From verdict to host"), and
``explain`` (what happened to one candidate).

``apply`` and ``rollback`` go to the running daemon over its socket, which carries them out at the
next tournament boundary; with no daemon running they are carried out here, under the state_dir's
lock, by the same functions (``host.adoption`` through ``runtime.host_keeper``). ``verify`` and
``export`` only read (the state directory and the knob files) and run here, daemon or not.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from kloros_orchestrator import __version__
from kloros_orchestrator.errors import DaemonNotRunning, KlorosError

if TYPE_CHECKING:
    from kloros_orchestrator.config import LoadedConfig
    from kloros_orchestrator.host.adoption import Choice
    from kloros_orchestrator.spica.journal import KnobJournal
    from kloros_orchestrator.store import StatePaths

EXIT_OK, EXIT_FAILURE, EXIT_DRIFT = 0, 1, 1
COMMANDS = frozenset({"apply", "rollback", "verify", "export", "explain"})


def add_parsers(sub: Any) -> None:
    """The four sub-commands on ``sub`` (argparse sub-parsers)."""
    a = sub.add_parser("apply", help="adopt a variant PHASE promoted (the host runs it from now on)")
    a.add_argument("--domain", required=True)
    pick = a.add_mutually_exclusive_group(required=True)
    pick.add_argument("--variant", metavar="ID", help="a variant id from phase_results.json (e.g. g3c1)")
    pick.add_argument("--phase", choices=["latest"], help="the best variant the latest PHASE promoted")
    a.add_argument("--force", action="store_true", help="adopt a variant PHASE did not promote")
    r = sub.add_parser("rollback", help="back to the factory values (every domain, or one)")
    r.add_argument("--domain")
    v = sub.add_parser("verify", help="live knob values vs the adopted (or factory) configuration")
    v.add_argument("--domain")
    v.add_argument("--json", action="store_true", help="print the checks as JSON")
    e = sub.add_parser("export", help="write the configuration as TuneD / sysctl.d / systemd files")
    e.add_argument("--domain", required=True)
    which = e.add_mutually_exclusive_group()
    which.add_argument("--variant", metavar="ID", help="a variant from the latest PHASE or the hall of fame")
    which.add_argument("--adopted", action="store_true", help="the adopted configuration (the default)")
    e.add_argument("--format", required=True, choices=["tuned", "sysctl", "systemd"])
    e.add_argument("--out", type=Path, default=Path("."), help="directory to write into (default: .)")
    e.add_argument("--unit", help="systemd unit for --format systemd (default: domain_options.<d>.unit)")
    x = sub.add_parser("explain", help="what happened to one candidate: race, caps, score, PHASE, host")
    x.add_argument("cand_id", help="a candidate id, e.g. g0c2 (status, the report, packs name them)")
    x.add_argument("--domain", help="only this domain's candidate of that id")
    for p in (a, r, v, e, x):
        p.add_argument("--config", type=Path, help="dream.yaml (default: the embedded default)")
    for p in (a, r):
        p.add_argument("--socket", help="the daemon's socket (default: from --config)")


SYSTEM_CONFIG: Final = Path("/etc/kloros-orchestrator/dream.yaml")  # what `make install` puts there


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from kloros_orchestrator.config import load_config

    config = args.config
    if config is None and not load_config(None).state_dir.exists() and SYSTEM_CONFIG.is_file():
        config = SYSTEM_CONFIG  # no local state: the installed daemon's, as status finds its socket
    loaded = load_config(config)
    if args.command in ("apply", "rollback"):
        return _change(args, loaded)
    if args.command == "verify":
        return _verify(args, loaded)
    if args.command == "explain":
        from kloros_orchestrator.explain import explain
        from kloros_orchestrator.store import StatePaths

        print("\n".join(explain(StatePaths(loaded.state_dir), args.cand_id, args.domain)))
        return EXIT_OK
    return _export(args, loaded, argv)


# --- apply / rollback ----------------------------------------------------------------------------


def _change(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from kloros_orchestrator.runtime.control import query

    req: dict[str, Any] = {"cmd": args.command, "domain": args.domain}
    if args.command == "apply":
        req.update(variant=args.variant, force=args.force)
    socket = Path(args.socket) if args.socket else loaded.socket_path
    try:
        reply = query(socket, req)
    except DaemonNotRunning:
        reply = _offline(req, loaded)
    if not reply.get("ok"):
        print(f"error: {reply.get('error', 'refused')}", file=sys.stderr)
        return EXIT_FAILURE
    print(reply.get("message", "done"))
    return EXIT_OK


def _offline(req: dict[str, Any], loaded: LoadedConfig) -> dict[str, Any]:
    """No daemon: the same change, carried out now under the state_dir's lock."""
    from kloros_orchestrator.runtime.startup import lock_state_dir
    from kloros_orchestrator.statedir import check_state_dir

    check_state_dir(loaded.state_dir, socket_dir=loaded.socket_path.parent)
    lock = lock_state_dir(loaded.state_dir)  # refuses while a daemon starts or runs here
    try:
        if req["cmd"] == "rollback":
            return _offline_rollback(req["domain"], loaded)
        return _offline_apply(req, loaded)
    finally:
        os.close(lock)


def _offline_rollback(domain: str | None, loaded: LoadedConfig) -> dict[str, Any]:
    from kloros_orchestrator.host import adoption
    from kloros_orchestrator.host.store import HostStore
    from kloros_orchestrator.runtime.ports import EventLog
    from kloros_orchestrator.store import StatePaths

    paths = StatePaths(loaded.state_dir)
    store = HostStore(paths)
    recorded = store.adopted()
    known = sorted(set(recorded.domains) | set(recorded.factory_pending))
    names = [n for n in known if n == domain or not domain]
    if not names:
        return {"ok": True, "message": adoption.nothing_to_roll_back(domain)}
    _restore_crashed(loaded)  # else the next start would put a crashed trial's originals back on top
    written = [f for name in names for f in adoption.rollback(store, name, loaded.sysfs_root)]
    for name in names:
        EventLog(paths.events, time.time).record("rolled_back", domain=name, offline=True)
    return {"ok": True, "message": f"rolled back {', '.join(names)}: {len(written)} file(s) written"}


def _offline_apply(req: dict[str, Any], loaded: LoadedConfig) -> dict[str, Any]:
    import anyio
    import msgspec

    from kloros_orchestrator.host import adoption
    from kloros_orchestrator.host.store import HostStore
    from kloros_orchestrator.runtime.host_keeper import HostKeeper
    from kloros_orchestrator.runtime.ports import EventLog
    from kloros_orchestrator.runtime.startup import open_domains
    from kloros_orchestrator.store import StatePaths

    paths, root, name = StatePaths(loaded.state_dir), loaded.sysfs_root, req["domain"]
    only = msgspec.structs.replace(loaded, config=_only_domain(loaded, name))
    try:  # before anything touches the host: a refused variant changes nothing
        choice = _offline_choice(req, loaded, paths)
    except adoption.AdoptionRefused as e:
        return {"ok": False, "error": str(e)}
    journal = _restore_crashed(loaded)
    store = HostStore(paths)
    keeper = HostKeeper(store=store, sysfs_root=root, mode=loaded.config.promotion.mode,
                        events=EventLog(paths.events, time.time), lock=anyio.Lock(),
                        set_current=lambda n, g: None)  # fmt: skip
    keeper.domains = {n: d for n, d in open_domains(only, journal, paths).items() if d.support == "ok"}
    try:
        config = keeper.adopt(choice)
    except adoption.AdoptionRefused as e:
        return {"ok": False, "error": str(e)}
    try:
        written = adoption.enforce(store, name, root)
    except (KlorosError, OSError) as e:
        return {"ok": False, "error": f"{name}: adopted {config.provenance.cand_id}, but writing the host "
                f"failed: {e}; the daemon's next start applies it again, `rollback` undoes it"}  # fmt: skip
    p = config.provenance
    return {"ok": True, "message": f"{name}: adopted {p.cand_id} ({p.evidence}); "
            f"{len(written)} file(s) written (no daemon was running)"}  # fmt: skip


def _offline_choice(req: dict[str, Any], loaded: LoadedConfig, paths: StatePaths) -> Choice:
    """As the daemon's ``apply``: in a fleet, the fleet's pick on this host's latest PHASE run (the
    decision kept under ``state_dir/fleet/phase``) when no other variant is named; otherwise (and on
    one host) the variant of this host's own PHASE results."""
    from kloros_orchestrator.host import adoption
    from kloros_orchestrator.runtime.fleet_phase import latest_decision
    from kloros_orchestrator.runtime.host_keeper import fleet_choice

    name, variant, force = req["domain"], req["variant"], req["force"]
    fleet = latest_decision(paths.root / "fleet" / "phase", name) if loaded.config.study.shared else None
    if fleet is not None and fleet.pick is not None and variant in (None, fleet.pick.cand_id):
        return fleet_choice(fleet, "operator", force)
    return adoption.choose(paths, name, variant=variant, force=force)


def _restore_crashed(loaded: LoadedConfig) -> KnobJournal:
    """The journal a crashed daemon left, restored (its trial's knobs back) before any change here."""
    from kloros_orchestrator.spica.registry import open_journal
    from kloros_orchestrator.store import StatePaths

    paths = StatePaths(loaded.state_dir)
    journal = open_journal(paths.journal, sysfs_root=loaded.sysfs_root, scratch_root=paths.scratch,
                           domain_options=loaded.config.domain_options)  # fmt: skip
    for problem in journal.restore_all():
        print(f"warning: knob restore: {problem}", file=sys.stderr)
    return journal


def _only_domain(loaded: LoadedConfig, domain: str) -> Any:
    import msgspec

    cfg = loaded.config
    if domain not in cfg.dream.domains:
        raise KlorosError(f"domain {domain} is not enabled in this configuration (dream.domains)")
    return msgspec.structs.replace(cfg, dream=msgspec.structs.replace(cfg.dream, domains=[domain]))


# --- verify ----------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    import json

    import msgspec

    from kloros_orchestrator.host import adoption
    from kloros_orchestrator.host.store import HostStore
    from kloros_orchestrator.store import StatePaths

    store = HostStore(StatePaths(loaded.state_dir))
    recorded = set(store.adopted().domains) | set(store.factory().domains)
    if args.domain and args.domain not in recorded:
        enabled = loaded.config.dream.domains
        if args.domain not in enabled:
            raise KlorosError(f"no domain {args.domain} here (enabled: {', '.join(enabled)})")
        print(f"{args.domain}: nothing adopted; the host runs its own configuration (nothing to verify)")
        return EXIT_OK
    checks = adoption.verify(store, loaded.sysfs_root, [args.domain] if args.domain else None)
    drifted = any(c.drift for c in checks)
    if args.json:
        print(json.dumps(msgspec.to_builtins(checks), indent=2))
        return EXIT_DRIFT if drifted else EXIT_OK
    if not checks:
        print("nothing to verify: no adopted or factory configuration is recorded yet (the daemon records "
              "the factory values when it first runs)")  # fmt: skip
    for c in checks:
        if not c.drift:
            print(f"{c.domain}: {c.config} configuration holds ({c.files} file(s))")
        else:
            n = len(c.drift)
            print(f"{c.domain}: {n} of {c.files} file(s) drifted from the {c.config} configuration")
        for d in c.drift:
            print(f"drift: {d.line()}")
        for d in c.in_trial:
            print(f"in trial: {d.line()} (a tournament is measuring a candidate; the journal restores it)")
    return EXIT_DRIFT if drifted else EXIT_OK


# --- export ----------------------------------------------------------------------------------------


def _export(args: argparse.Namespace, loaded: LoadedConfig, argv: list[str] | None) -> int:
    from kloros_orchestrator.host.export import ExportSubject, export

    settings, provenance, label = _subject(args, loaded)
    command = "kloros-orchestrator " + shlex.join(argv if argv is not None else sys.argv[1:])
    subject = ExportSubject(args.domain, label, settings, provenance, command, __version__)
    unit = args.unit or loaded.config.domain_options.get(args.domain, {}).get("unit")
    for path in export(subject, args.format, args.out, unit=unit):
        print(path)
    return EXIT_OK


def _subject(args: argparse.Namespace, loaded: LoadedConfig) -> tuple[Any, Any, str]:
    from kloros_orchestrator.host import adoption
    from kloros_orchestrator.host.live import declared_settings
    from kloros_orchestrator.host.records import Provenance
    from kloros_orchestrator.host.store import HostStore
    from kloros_orchestrator.store import StatePaths

    paths = StatePaths(loaded.state_dir)
    if args.variant is None:
        config = HostStore(paths).adopted_config(args.domain)
        if config is None:
            raise KlorosError(
                f"{args.domain} runs its factory configuration: nothing adopted to export (see status; "
                "name a variant with --variant ID)"
            )
        return list(config.settings), config.provenance, "adopted"
    choice = adoption.choose(paths, args.domain, variant=args.variant, force=True)
    dom = _domain(loaded, args.domain)
    prov = choice.provenance
    evidence = prov.evidence.removeprefix("forced: ")
    provenance = Provenance(by="operator", at=prov.at, phase_run_id=prov.phase_run_id, cand_id=prov.cand_id,
                            spica_id=prov.spica_id, score_v2=prov.score_v2, score_ci95=prov.score_ci95,
                            evidence=f"exported, not adopted: {evidence}")  # fmt: skip
    return declared_settings(dom, choice.genome), provenance, args.variant


def _domain(loaded: LoadedConfig, name: str) -> Any:
    """The domain object for its declared knobs only (nothing is discovered, nothing written)."""
    from typing import cast

    from kloros_orchestrator.config import class_options
    from kloros_orchestrator.spica.journal import KnobJournal
    from kloros_orchestrator.spica.registry import get_domain_class
    from kloros_orchestrator.store import StatePaths

    return get_domain_class(name)(
        sysfs_root=loaded.sysfs_root,
        journal=cast(KnobJournal, _NoJournal()),
        regimes=loaded.regimes.get(name, {}),
        scratch_dir=StatePaths(loaded.state_dir).scratch / name,
        options=class_options(loaded.config.domain_options.get(name, {})),
    )


class _NoJournal:
    """Stands in for the journal of a domain that is only asked for its declared knobs."""

    def declare(self, targets: Any) -> None:  # pragma: no cover - never discovered
        raise KlorosError("this domain object is for export only")
