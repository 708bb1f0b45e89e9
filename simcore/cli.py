"""The ``simcore`` command line. Invalid input: one ``error: field: reason`` line, exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: same exit code, one line
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _load(args):
    from scenarios import load_scenario
    from simcore.models import check

    scenario = load_scenario(args.scenario, args.set or [])
    if getattr(args, "steps", None) is not None:
        if args.steps <= 0:
            from scenarios import ScenarioError
            raise ScenarioError("--steps", f"must be > 0, got {args.steps}")
        scenario = scenario.model_copy(update={"run": scenario.run.model_copy(update={"steps": args.steps})})
    if getattr(args, "seed", None) is not None:
        scenario = scenario.model_copy(update={"run": scenario.run.model_copy(update={"seed": args.seed})})
    check(scenario)
    return scenario


def cmd_scenarios(args) -> int:
    from scenarios import builtin_names, load_scenario

    for name in builtin_names():
        sc = load_scenario(name)
        print(f"{name:24s} {sc.population.size:>10,d} agents  {sc.run.steps:>5d} steps  {sc.description}")
    return 0


def cmd_validate(args) -> int:
    sc = _load(args)
    print(f"ok: {sc.name} ({sc.model.kind}, {sc.population.size:,} agents, {sc.run.steps} steps)")
    return 0


def cmd_run(args) -> int:
    from simcore.runs import run_scenario

    sc = _load(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        from scenarios import ScenarioError
        raise ScenarioError("--out", f"directory exists and is not empty: {out}")
    run_dir = run_scenario(sc, out, progress=not args.quiet)
    print(f"run directory: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="simcore", description="Large-scale agent-based simulation with LLM archetypes.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def scenario_args(sp):
        sp.add_argument("scenario", help="path to a scenario YAML or the name of a built-in one")
        sp.add_argument("--set", action="append", metavar="dotted.key=value", help="override a scenario field")

    sp = sub.add_parser("run", help="run a scenario")
    scenario_args(sp)
    sp.add_argument("--out", help="run directory (default: <output.dir>/<name>-<timestamp>)")
    sp.add_argument("--steps", type=int)
    sp.add_argument("--seed", type=int)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("validate", help="check a scenario without running it")
    scenario_args(sp)
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("scenarios", help="list the built-in scenarios")
    sp.set_defaults(func=cmd_scenarios)
    return p


def main(argv: list[str] | None = None) -> int:
    from scenarios import ScenarioError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
