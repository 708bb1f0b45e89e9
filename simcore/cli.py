"""The ``simcore`` command line. Invalid input: one ``error: field: reason`` line, exit code 2."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import MutableMapping

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: same exit code, one line
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _overrides(args) -> list[str]:
    """The ``dotted.key=value`` items a command applies to its scenario: ``--overlay``'s, then ``--set`` (which wins)."""
    overrides = list(args.set or [])
    if getattr(args, "overlay", None):
        from simcore.calibrate import read_overlay
        overrides = read_overlay(args.overlay) + overrides
    return overrides


def _load(args, *, memory: bool = True, backend: bool = False, overrides: list[str] | None = None):
    """The scenario as ``run`` will see it: file, ``--set``, the flags, then :func:`simcore.validation.check_scenario`.
    ``overrides``: :func:`_overrides` of ``args`` when the caller has them already."""
    from scenarios import ScenarioError, load_scenario, validate
    from simcore.validation import check_scenario

    scenario = load_scenario(args.scenario, _overrides(args) if overrides is None else overrides)
    run = {}
    if getattr(args, "steps", None) is not None:
        if args.steps <= 0:
            raise ScenarioError("--steps", f"must be > 0, got {args.steps}")
        run["steps"] = args.steps
    if getattr(args, "devices", None) is not None and args.command != "plan":
        if args.devices < 1:
            raise ScenarioError("--devices", f"must be >= 1, got {args.devices}")
        run["devices"] = args.devices
    if getattr(args, "seed", None) is not None:
        run["seed"] = args.seed
    if run:  # through the schema again: the flags obey the same bounds as the file
        data = scenario.model_dump(mode="json")
        data["run"].update(run)
        try:
            scenario = validate(data)
        except ScenarioError as exc:
            key = exc.field.removeprefix("run.")
            raise ScenarioError(f"--{key}" if key in run else exc.field, exc.reason) from None
    return check_scenario(scenario, memory=memory, backend=backend)


def _check_writable(path: Path, flag: str) -> None:
    """``path`` (a directory to be made) can be made: its nearest existing ancestor is a writable directory."""
    import os

    from scenarios import ScenarioError

    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ScenarioError(flag, f"cannot create {path}: {probe} is not a writable directory")


def cmd_scenarios(args) -> int:
    from scenarios import builtin_names, load_scenario

    for name in builtin_names():
        sc = load_scenario(name)
        print(f"{name:24s} {sc.population.size:>10,d} agents  {sc.run.steps:>5d} steps  {sc.description}")
    return 0


def cmd_validate(args) -> int:
    sc = _load(args, backend=args.check_backend)
    backend = f", backend {sc.policy.backend.get('kind')} answered" if args.check_backend and sc.policy else ""
    print(f"ok: {sc.name} ({sc.model.kind}, {sc.population.size:,} agents, {sc.run.steps} steps{backend})")
    return 0


def cmd_run(args) -> int:
    from simcore.runs import run_scenario

    if args.distributed:
        # before anything touches a device: JAX's backends must see the whole cluster
        from simcore.distributed import initialize
        initialize()
    sc = _load(args)
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        from scenarios import ScenarioError
        raise ScenarioError("--out", f"{'directory exists and is not empty' if out.is_dir() else 'not a directory'}: {out}")
    _check_writable(out if out is not None else Path(sc.output.dir), "--out" if out is not None else "output.dir")
    if args.distributed:
        from simcore.distributed import barrier
        barrier("simcore-out-checked")  # no process may create it before every process has looked
    every = getattr(args, "checkpoint_every", None)
    if every is not None and every <= 0:
        from scenarios import ScenarioError
        raise ScenarioError("--checkpoint-every", f"must be > 0, got {every}")
    run_dir = run_scenario(sc, out, progress=not args.quiet, checkpoint_every=every or 0)
    print(f"run directory: {run_dir}")
    return 0


def cmd_calibrate(args) -> int:
    from simcore.calibrate import calibrate

    settings = _overrides(args)  # written into the overlay: the fitted values belong to this model
    sc = _load(args, overrides=settings)
    out = args.out or str(Path(sc.output.dir) / f"calibrate-{sc.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    weights = {}
    for item in args.weight or []:
        key, _, raw = item.partition("=")
        try:
            weights[key] = float(raw)
        except ValueError:
            from scenarios import ScenarioError
            raise ScenarioError("--weight", f"expected series=number, got {item!r}") from None
        if key not in ("cases", "hospitalizations", "deaths", "unemployment") or weights[key] < 0:
            from scenarios import ScenarioError
            raise ScenarioError("--weight", f"expected cases|hospitalizations|deaths|unemployment=value >= 0, "
                                            f"got {item!r}")
    path = calibrate(sc, observed=args.observed, window=args.window, fit=args.fit, out=out, method=args.method,
                     size=args.size, forecast_to=args.forecast_to, iterations=args.iterations, lr=args.lr,
                     generations=args.generations, popsize=args.popsize, band_runs=args.band_runs,
                     posterior_runs=args.posterior_runs, posterior_min_ess=args.posterior_min_ess,
                     posterior_max_runs=args.posterior_max_runs,
                     weights=weights, progress=not args.quiet, settings=settings)
    print(f"calibration directory: {path}")
    return 0


def cmd_resume(args) -> int:
    from simcore.session import resume_run

    for flag, value in (("--steps", args.steps), ("--checkpoint-every", args.checkpoint_every)):
        if value is not None and value <= 0:
            from scenarios import ScenarioError
            raise ScenarioError(flag, f"must be > 0, got {value}")
    run_dir = resume_run(args.run_dir, steps=args.steps, checkpoint=args.checkpoint,
                         checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    print(f"run directory: {run_dir}")
    return 0


def cmd_interview(args) -> int:
    import json

    from simcore.session import interview

    backend = None
    if args.backend:
        backend = args.backend
        if backend.lstrip().startswith("{"):
            try:
                backend = json.loads(backend)
            except ValueError as exc:
                from scenarios import ScenarioError
                raise ScenarioError("backend", f"not a JSON object: {exc}") from None
    row = interview(args.run_dir, args.step, args.question, agent=args.agent, archetype=args.archetype,
                    options=args.options, max_tokens=args.max_tokens, backend=backend)
    who = f"agent {row['agent_id']}" if row["agent_id"] is not None else f"archetype {row['archetype']}"
    print(f"{who} at step {row['step']} (restored from checkpoint {row['checkpoint_step']} "
          f"in {row['restore_seconds']:.1f} s, answered in {row['seconds']:.1f} s by {row['backend']}):")
    if row["error"]:
        print(f"error: the backend gave no answer: {row['error']}", file=sys.stderr)
        return 1
    print(f"answer: {row['answer']}")
    for option, p in zip(row["options"], row["probs"]):
        print(f"  {option}: {p:.3f}")
    return 0


def cmd_experiment(args) -> int:
    from simcore.experiments import run_experiment_file

    out = run_experiment_file(args.experiment, out=args.out, progress=not args.quiet)
    print(f"experiment directory: {out}")
    return 0


def cmd_report(args) -> int:
    from analysis.readers import NotAResultDir
    from analysis.report import write_report
    from scenarios import ScenarioError

    try:
        html = write_report(args.directory, out=args.out)
    except NotAResultDir as exc:
        raise ScenarioError("directory", str(exc)) from None
    print(f"report: {html}")
    return 0


def cmd_serve(args) -> int:
    import os

    from scenarios import ScenarioError
    from server.main import serve

    token = args.token or os.environ.get("SIMCORE_TOKEN") or None
    if args.max_runs < 0:
        raise ScenarioError("--max-runs", f"must be >= 0, got {args.max_runs}")
    try:
        return serve(host=args.host, port=args.port, runs_dir=args.runs_dir, token=token, max_runs=args.max_runs)
    except ValueError as exc:
        raise ScenarioError("--token", str(exc)) from None


def cmd_llm_probe(args) -> int:
    from scenarios import ScenarioError
    from simcore.models import build
    from simcore.runs import make_archetype_policy

    sc = _load(args, memory=False)  # probed at --size agents
    if sc.policy is None:
        raise ScenarioError("policy", "the scenario has no LLM policy to probe")
    size = min(sc.population.size, args.size)
    sc = sc.model_copy(update={"population": sc.population.model_copy(update={"size": size}),
                               "output": sc.output.model_copy(update={"sample_agents": 0})})
    built = build(sc)
    policy = make_archetype_policy(sc, built)
    from llm_policy.probe import probe

    result = probe(policy, built.state, built.params, step=args.step, schedule=built.schedule)
    items = None
    if sc.surveys:  # survey items too: sensitivity to the listed option order and to temperature
        from llm_policy.probe import probe_surveys

        items = probe_surveys(policy, sc.surveys, built.state, built.params, step=args.step, schedule=built.schedule)
    policy.close()
    for s in result.summary:
        print(f"{s['decision']}: {s['archetypes']} archetypes, {s['failed']} failed")
        print(f"  P({s['first_option']}) mean {s['rate']:.3f} (population-weighted {s['rate_population_weighted']:.3f}),"
              f" spread across archetypes {s['spread_across_archetypes']:.3f}")
        print(f"  listed option order reversed: {s['rate_reversed_order']:.3f}"
              f" (shift {s['rate_reversed_order'] - s['rate']:+.3f}); orders averaged: spread"
              f" {s['spread_order_averaged']:.3f}")
        print(f"  content-free prompt: P({s['first_option']}) {s['content_free_rate']:.3f}; calibrated:"
              f" mean {s['rate_calibrated']:.3f}, spread {s['spread_calibrated']:.3f}")
        effects = ", ".join(f"{k[7:]} {v:.2f}" for k, v in s.items() if k.startswith("effect_"))
        print(f"  logit spread across archetypes {s['spread_logit']:.3f}; main effects (logit range): {effects}")
        temps = ", ".join(f"T={k[6:]}: {v:.3f}" for k, v in s.items() if k.startswith("rate_T"))
        print(f"  by temperature: {temps}")
    for s in (items.summary if items else []):
        print(f"survey {s['survey']}.{s['item']} ({s['kind']}): {s['archetypes']} archetypes, {s['failed']} failed")
        print(f"  option order: sensitivity {s['order_sensitivity']:.3f} (largest TV distance between orders),"
              f" listed-first gain {s['first_listed_gain']:+.3f}")
        temps = ", ".join(f"T={k[7:]}: {v:.3f}" for k, v in s.items() if k.startswith("share_T"))
        print(f"  temperature: sensitivity {s['temperature_sensitivity']:.3f} (TV, T=0.5 vs 2);"
              f" share of {s['modal_option']!r} {temps}")
    if items:
        result.rows.extend({"decision": f"survey:{r['survey']}.{r['item']}",
                            **{k: v for k, v in r.items() if k not in ("survey", "item")}} for r in items.rows)
    if args.out:
        import polars as pl
        pl.DataFrame(result.rows).write_parquet(args.out)
        print(f"rows: {args.out}")
    return 0


def cmd_plan(args) -> int:
    from scenarios import ScenarioError
    from simcore.plan import check_fits

    sc = _load(args, memory=False)  # plan measures memory itself
    if args.devices is not None and args.devices < 1:
        raise ScenarioError("--devices", f"must be >= 1, got {args.devices}")
    cap = args.capacity_gib * 2**30 if args.capacity_gib else None
    p = check_fits(sc, args.devices, cap)
    print(f"fits: {p.describe()}")
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
    sp.add_argument("--devices", type=int, help="shard agents over this many devices (default: run.devices)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--checkpoint-every", type=int, metavar="N",
                    help="write a checkpoint every N steps into <run>/checkpoints/step=K/")
    sp.add_argument("--distributed", action="store_true",
                    help="one process of a multi-host run: jax.distributed from JAX_COORDINATOR_ADDRESS, "
                         "JAX_NUM_PROCESSES, JAX_PROCESS_ID (or SLURM/Open MPI); uses every device of every process")
    sp.add_argument("--overlay", metavar="FILE", help="apply a YAML of dotted.key: value overrides first "
                                                      "(e.g. a calibration's overlay.yaml); --set wins")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("calibrate", help="fit parameters to observed series; forecast held-out weeks with bands")
    scenario_args(sp)
    sp.add_argument("--overlay", metavar="FILE", help="start from this overlay (e.g. an earlier calibration)")
    sp.add_argument("--observed", required=True, help="observed data: 'nyc' (packaged) or a directory")
    sp.add_argument("--window", required=True, metavar="START:END", help="fitted dates, YYYY-MM-DD:YYYY-MM-DD; "
                                                                          "START is the scenario's step 0")
    sp.add_argument("--fit", required=True, metavar="PARAM,...", help="numeric model parameters by dotted path, "
                                                                     "e.g. beta.community,initial_infected,ifr.5, "
                                                                     "and intervention values as interventions."
                                                                     "<name or index>.value")
    sp.add_argument("--forecast-to", metavar="DATE", help="simulate and score held-out weeks up to this date")
    sp.add_argument("--method", default="both", help="gradient, cmaes or both (gradient, then CMA-ES + ABC)")
    sp.add_argument("--size", type=int, default=100_000, help="reduced population for fitting (default 100000)")
    sp.add_argument("--iterations", type=int, default=40, help="Adam steps of the gradient path")
    sp.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (transformed parameters)")
    sp.add_argument("--generations", type=int, default=12, help="CMA-ES generations")
    sp.add_argument("--popsize", type=int, default=8, help="CMA-ES population (one vmapped batch)")
    sp.add_argument("--band-runs", type=int, default=16, help="forward runs for the 80%% prediction bands")
    sp.add_argument("--posterior-runs", type=int, default=32, help="importance-sampling proposals for the "
                                                                     "posterior (after CMA-ES)")
    sp.add_argument("--posterior-min-ess", type=float, default=0.0, help="add importance-sampling rounds while "
                                                                        "the posterior's ESS is below this "
                                                                        "(default 0: never)")
    sp.add_argument("--posterior-max-runs", type=int, help="the most posterior proposals --posterior-min-ess may "
                                                           "reach (default 3 x --posterior-runs)")
    sp.add_argument("--weight", action="append", metavar="SERIES=W", help="loss weight (defaults: deaths 1, "
                                                                          "hospitalizations 1, cases 0.25, unemployment 1)")
    sp.add_argument("--out", help="calibration directory (default: <output.dir>/calibrate-<name>-<time>)")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--quiet", action="store_true")
    sp.set_defaults(func=cmd_calibrate)

    sp = sub.add_parser("resume", help="continue a killed or stopped run from its latest checkpoint")
    sp.add_argument("run_dir", help="run directory written with --checkpoint-every")
    sp.add_argument("--steps", type=int, help="total steps (default: the run's own; larger extends it)")
    sp.add_argument("--checkpoint", help="a checkpoint directory to resume from (default: the latest)")
    sp.add_argument("--checkpoint-every", type=int, metavar="N", help="default: the run's own setting")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_resume)

    sp = sub.add_parser("interview", help="ask one agent or archetype of a run a question at a step")
    sp.add_argument("run_dir", help="a run directory with checkpoints (--checkpoint-every)")
    sp.add_argument("question")
    sp.add_argument("--step", type=int, required=True, help="the run step whose state the agent answers from")
    sp.add_argument("--agent", type=int, help="the agent id")
    sp.add_argument("--archetype", help="feature=level[,feature=level...]: one archetype of a policy decision")
    sp.add_argument("--options", help='"a|b|c": a choice scored from log-probs (default: a free answer)')
    sp.add_argument("--max-tokens", type=int, default=64, help="bound of a free answer (default 64)")
    sp.add_argument("--backend", help='a backend kind (llamacpp, openai, vllm, replay) or a JSON spec '
                                      '(default: the run\'s policy backend and its response cache)')
    sp.set_defaults(func=cmd_interview)

    sp = sub.add_parser("experiment", help="run an experiment file (arms x seeds, paired summaries)")
    sp.add_argument("experiment", help="path to an experiment YAML")
    sp.add_argument("--out", help="experiment directory (default: <output.dir>/<name>-<timestamp>)")
    sp.add_argument("--quiet", action="store_true", help="no progress output")
    sp.set_defaults(func=cmd_experiment)

    sp = sub.add_parser("report", help="write an HTML report (with PNG figures) for a run or experiment")
    sp.add_argument("directory", help="a run directory or an experiment directory")
    sp.add_argument("--out", help="report directory (default: <directory>/report)")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("serve", help="live dashboard and REST API (FastAPI + uvicorn)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (anything but loopback needs a token)")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--runs-dir", default="runs", help="where runs are written and listed from")
    sp.add_argument("--token", help="required for mutating calls (default: $SIMCORE_TOKEN)")
    sp.add_argument("--max-runs", type=int, default=4, help="concurrent live runs")
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("llm-probe", help="decision-bias diagnostic: every archetype prompt once")
    scenario_args(sp)
    sp.add_argument("--size", type=int, default=20_000, help="population used for group sizes (default 20000)")
    sp.add_argument("--step", type=int, default=30, help="simulated day shown in the prompts")
    sp.add_argument("--out", help="write per-archetype rows to this Parquet file")
    sp.set_defaults(func=cmd_llm_probe)

    sp = sub.add_parser("plan", help="predicted memory per device; refuses sizes that will not fit")
    scenario_args(sp)
    sp.add_argument("--devices", type=int, help="number of devices (default: run.devices)")
    sp.add_argument("--capacity-gib", type=float, help="memory per device (default: what the device reports)")
    sp.set_defaults(func=cmd_plan)

    sp = sub.add_parser("validate", help="check a scenario without running it (all that `run` checks, nothing built)")
    scenario_args(sp)
    sp.add_argument("--check-backend", action="store_true",
                    help="also start (or reach) the policy's LLM backend and score one test prompt")
    sp.set_defaults(func=cmd_validate)

    sp = sub.add_parser("scenarios", help="list the built-in scenarios")
    sp.set_defaults(func=cmd_scenarios)
    return p


HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def request_host_devices(environ: MutableMapping[str, str] = os.environ, count: int | None = None) -> bool:
    """Ask XLA for ``count`` host (CPU) devices (default: the usable cores), before jax is imported.

    Experiments split their replicates over the host devices, one per core, which runs them
    concurrently (docs/experiments.md, Batching). ``XLA_FLAGS`` is extended, never replaced,
    and left alone when it already sets a device count. Returns whether it changed anything.
    Without effect once jax has initialised its backends; only for the CPU platform.
    """
    flags = environ.get("XLA_FLAGS", "")
    if HOST_DEVICES_FLAG in flags:
        return False
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if count < 2:
        return False
    environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICES_FLAG}={int(count)}".strip()
    return True


def main(argv: list[str] | None = None) -> int:
    from scenarios import ScenarioError

    args = build_parser().parse_args(argv)
    if args.func is cmd_experiment and "jax" not in sys.modules:
        request_host_devices()  # replicates split over the cores (before jax is imported, below)

    from simcore.distributed import DistributedError

    try:
        return args.func(args)
    except (ScenarioError, DistributedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        from llm_policy.backends import ReplayMiss

        if not isinstance(exc, ReplayMiss):
            raise
        # a replayed run asked a question the original never did: it has diverged
        print(f"error: replay: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
