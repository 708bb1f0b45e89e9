"""The FastAPI app: REST API, Server-Sent Events stream and the dashboard page.

``create_app(ServerConfig(...))`` builds an app around one :class:`RunManager`.
Every scenario that comes in over HTTP goes through exactly the CLI's path:
``parse_yaml`` -> ``apply_overrides`` -> ``validate`` -> ``check_scenario`` (through ``simcore.session``);
only built-in names or uploaded text are accepted, never a path on the server.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import io
import json
import logging
import math
import os
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, field_validator
from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from scenarios import REGISTRY, Scenario, ScenarioError, apply_overrides, builtin_dir, builtin_names, parse_yaml, validate
from scenarios.loader import read_yaml
from simcore import rundir

from . import data
from .runs import FINISHED, MODES, RunController, RunError, RunLimitError, RunManager, summary_from_manifest
from .security import Guard, is_loopback

log = logging.getLogger("simcore.server")
STATIC = Path(__file__).resolve().parent / "static"
ACK_TIMEOUT = 30.0  # seconds a control call waits for the worker to apply it before answering 202


def plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found in the plotly package ({path})")
    return path


@dataclass
class ServerConfig:
    runs_dir: Path = Path("runs")
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_runs: int = 4
    max_upload_bytes: int = 256 * 1024
    max_agents: int = 10_000_000
    max_steps: int = 1_000_000
    max_chunk: int = 5
    checkpoint_every: int = 100  # live runs checkpoint every N steps (and where they stop); 0: never
    allowed_hosts: list[str] = field(default_factory=list)
    compile_cache: str | None = None  # persistent XLA cache directory (None: leave JAX's setting alone)
    trust_policy_backends: bool = False  # accept any policy.backend / policy.cache from HTTP (trusted users only)
    # what answers interviews (a backend object or factory; tests: a scripted one); None: the run's own policy
    # backend with its response cache, or, with trust_policy_backends, a request's ``backend``
    interview_backend: Any = None

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ValueError(f"refusing to bind {self.host!r} without a token: pass --token or set SIMCORE_TOKEN "
                             "(only 127.0.0.1/localhost may run without one)")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("the token must be at least 8 characters")
        if self.max_runs < 0 or self.max_upload_bytes < 1:
            raise ValueError("max_runs must be >= 0 and max_upload_bytes >= 1")


# -- request / response models ------------------------------------------------------------
class FieldError(BaseModel):
    field: str
    reason: str
    detail: str


class Message(BaseModel):
    detail: str


class ScenarioRequest(BaseModel):
    """A built-in scenario by name, or the text of a scenario YAML; plus ``dotted.key=value`` overrides."""

    scenario: str | None = Field(None, description="name of a built-in scenario", max_length=200)
    yaml: str | None = Field(None, description="scenario YAML text (validated like `simcore validate`)")
    overrides: list[str] = Field(default_factory=list, max_length=200,
                                 description="like the CLI's --set, e.g. population.size=5000")


class StartRequest(ScenarioRequest):
    start_paused: bool = Field(False, description="build, then wait for resume/step")


class StepRequest(BaseModel):
    n: int = Field(1, ge=1, le=100_000, description="steps to run, then pause again")


class InterventionRequest(BaseModel):
    param: str = Field(max_length=100)
    value: float
    mode: Literal["set", "multiply", "add"] = "set"
    start: int | None = Field(None, ge=0, description="first step (default: the next step)")
    end: int | None = Field(None, gt=0, description="end step, exclusive (default: the end of the run)")

    @field_validator("value")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class InterviewRequest(BaseModel):
    """``simcore interview`` over HTTP: one of ``agent`` and ``archetype``; ``options`` for a choice."""

    step: int = Field(ge=0, description="the run step whose state the agent answers from")
    question: str = Field(max_length=2000)
    agent: int | None = Field(None, ge=0, description="agent id")
    archetype: str | None = Field(None, max_length=500, description="feature=level[,feature=level...]")
    options: list[str] | None = Field(None, max_length=20, description="a choice scored from log-probs")
    max_tokens: int = Field(64, ge=1, le=512, description="bound of a free answer")
    backend: str | None = Field(None, max_length=50, description="a backend kind (only with trusted backends)")


class RunSummary(BaseModel):
    id: str
    scenario: str | None
    model: str | None
    agents: int | None
    status: str | None
    step: int | None
    steps: int | None
    seed: int | None
    live: bool
    created: str | None
    steps_per_second: float | None
    error: str | None


class ValidateResponse(BaseModel):
    ok: bool
    name: str
    model: str
    agents: int
    steps: int
    scheduled_params: list[str]
    scenario: dict[str, Any]


class ControlResponse(BaseModel):
    applied: bool = Field(description="false: queued, the worker has not reached a chunk boundary yet (HTTP 202)")
    result: dict[str, Any] | None
    run: dict[str, Any]


ERR_422 = {422: {"model": FieldError, "description": "invalid input: which field and why"}}
ERR_404 = {404: {"model": Message, "description": "no such run / file"}}
YAML_200 = {200: {"content": {"application/yaml": {"schema": {"type": "string"}}}, "description": "YAML text"}}
ERR_409 = {409: {"model": Message, "description": "not possible in the run's current state"}}


class ApiError(Exception):
    def __init__(self, status: int, detail: str):
        self.status = status
        self.detail = detail


def not_found(what: str = "run") -> ApiError:
    return ApiError(404, f"no such {what}")


# -- scenario input: the CLI's path, nothing else ---------------------------------------------
def load_request(req: ScenarioRequest, cfg: ServerConfig) -> tuple[Scenario, str]:
    """The CLI's path for uploaded text or a built-in name: the strict YAML loader (depth, node and
    size limits; no aliases from HTTP), overrides, the schema, then ``check_scenario``."""
    from simcore.session import check_scenario

    if (req.scenario is None) == (req.yaml is None):
        raise ScenarioError("scenario", "give exactly one of 'scenario' (a built-in name) or 'yaml' (scenario text)")
    if req.scenario is not None:
        names = builtin_names()
        if req.scenario not in names:
            raise ScenarioError("scenario",
                                f"unknown built-in scenario {req.scenario!r} (built-in: {', '.join(names)})")
        raw = read_yaml(builtin_dir() / f"{req.scenario}.yaml")
        source = f"builtin:{req.scenario}"
    else:
        raw = parse_yaml(req.yaml, "uploaded scenario", aliases=False)
        source = "upload"
    try:
        data_ = apply_overrides(raw, req.overrides)
    except ScenarioError as exc:
        raise ScenarioError("overrides" if exc.field == "--set" else exc.field, exc.reason) from None
    scenario = validate(data_)
    _check_policy(scenario, cfg)  # before check_scenario: it names the backend keys HTTP may not use
    if scenario.population.size > cfg.max_agents:
        raise ScenarioError("population.size", f"must be <= {cfg.max_agents} on this server, got {scenario.population.size}")
    if scenario.run.steps > cfg.max_steps:
        raise ScenarioError("run.steps", f"must be <= {cfg.max_steps} on this server, got {scenario.run.steps}")
    check_scenario(scenario)
    return scenario, source


# An LLM backend spec names files, URLs and engine options (model paths, endpoints, vllm kwargs):
# from HTTP only the embedded llama.cpp model with these settings, and the cache in the run directory.
SAFE_BACKEND_KEYS = {"kind", "n_ctx", "n_threads", "seed", "n_batch", "reuse_prefix"}


def _check_policy(scenario: Scenario, cfg: ServerConfig) -> None:
    policy = scenario.policy
    if policy is None or cfg.trust_policy_backends:
        return
    if policy.cache is not None:
        raise ScenarioError("policy.cache", "not accepted over HTTP (the cache is kept in the run directory)")
    backend = policy.backend
    if backend.get("kind") != "llamacpp":
        raise ScenarioError("policy.backend.kind", f"only 'llamacpp' (the embedded model) is accepted over HTTP, "
                                                   f"got {backend.get('kind')!r}")
    extra = sorted(set(backend) - SAFE_BACKEND_KEYS)
    if extra:
        raise ScenarioError(f"policy.backend.{extra[0]}", f"not accepted over HTTP (allowed: {', '.join(sorted(SAFE_BACKEND_KEYS))})")


def _field_error(exc: ScenarioError) -> JSONResponse:
    return JSONResponse({"field": exc.field, "reason": exc.reason, "detail": str(exc)}, 422)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


# -- the app --------------------------------------------------------------------------------------
def create_app(cfg: ServerConfig, manager: RunManager | None = None) -> FastAPI:
    cfg.check()
    if cfg.compile_cache:
        enable_compile_cache(cfg.compile_cache)
    manager = manager or RunManager(cfg.runs_dir, max_runs=cfg.max_runs, max_chunk=cfg.max_chunk,
                                    checkpoint_every=cfg.checkpoint_every)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.attach_loop(asyncio.get_running_loop())
        try:
            yield
        finally:
            await run_in_threadpool(manager.shutdown)
            manager.attach_loop(None)

    app = FastAPI(
        title="simcore live dashboard",
        version="1",
        description="Start, watch and steer simcore runs. Mutating calls need `Authorization: Bearer <token>` "
                    "when the server is bound to a non-loopback address.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.config = cfg
    app.add_middleware(Guard, token=cfg.token, max_body=cfg.max_upload_bytes)
    if is_loopback(cfg.host):
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1 still sends Host: evil.example
        hosts = ["127.0.0.1", "localhost", "::1", "[::1]", *cfg.allowed_hosts]
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    elif cfg.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=cfg.allowed_hosts)

    @app.exception_handler(ScenarioError)
    async def _scenario_error(request: Request, exc: ScenarioError):
        return _field_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        err = exc.errors()[0]
        loc = tuple(p for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"field": _loc(loc) or "body", "reason": err.get("msg", "invalid"),
                             "detail": f"{_loc(loc) or 'body'}: {err.get('msg', 'invalid')}"}, 422)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))

    interview_lock = threading.Lock()
    bearer = HTTPBearer(auto_error=False, description="required when the server is not bound to loopback")
    api = APIRouter(prefix="/api")
    control = APIRouter(prefix="/api", dependencies=[Depends(bearer)])  # the Guard enforces; this documents

    # -- helpers ----------------------------------------------------------------------------
    def run_dir_or_404(run_id: str) -> Path | None:
        """The run's directory; None for a live run still building (no files yet); 404 otherwise."""
        d = manager.run_dir(run_id)
        if d is None:
            if manager.get_live(run_id) is not None:
                return None
            raise not_found()
        return d

    def live_or_error(run_id: str) -> RunController:
        ctl = manager.get_live(run_id)
        if ctl is None:
            if manager.run_dir(run_id) is None:
                raise not_found()
            raise ApiError(409, "this run is not live in this server (it ran before a restart or elsewhere)")
        return ctl

    def control_call(ctl: RunController, kind: str, **args) -> JSONResponse:
        try:
            fut = ctl.command(kind, **args)
        except RunError as exc:
            raise ApiError(409, str(exc)) from None
        try:
            result = fut.result(timeout=ACK_TIMEOUT)
        except cf.TimeoutError:
            return JSONResponse({"applied": False, "result": None, "run": ctl.detail()}, 202)
        except RunError as exc:
            raise ApiError(409, str(exc)) from None
        return JSONResponse({"applied": True, "result": result, "run": ctl.detail()})

    def run_detail(run_id: str) -> dict[str, Any]:
        ctl = manager.get_live(run_id)
        d = manager.run_dir(run_id)
        if ctl is not None:
            out = ctl.detail()
            view = REGISTRY.entry_for(ctl.scenario).describe(ctl.scenario)
        elif d is not None:
            m = manager.manifest(run_id) or {}
            try:
                sc = REGISTRY.validate(m["scenario"])
                sched = list(REGISTRY.entry_for(sc).scheduled_params(sc))
            except (KeyError, ScenarioError, TypeError):
                sched = []
            out = {**summary_from_manifest(run_id, m), "source": (m.get("server") or {}).get("source"),
                   "overrides": (m.get("server") or {}).get("overrides", []), "scheduled_params": sched,
                   "schedule_now": {}, "live_interventions": m.get("live_interventions", [])}
            view = data.model_view(m)
        else:
            raise not_found()
        out["columns"] = data.metric_columns(d) if d is not None else []
        # what the page draws comes from the model's registry entry: charts, graph view, colours
        out["metric_groups"] = data.metric_groups(d, view["metric_groups"])
        out["graph"] = view["graph"]
        out["series_colors"] = view["series_colors"]
        out["agent_state"] = view["agent_state"]
        labels = ctl.labels if ctl is not None else (manager.manifest(run_id) or {}).get("labels") or {}
        out["agent_states"] = list(labels.get(view["agent_state"], [])) if view["agent_state"] else []
        out["agent_steps"] = rundir.agent_steps(d) if d is not None else []
        return out

    # -- info & scenarios -----------------------------------------------------------------------
    @api.get("/info", summary="Server settings the page needs")
    def info() -> dict[str, Any]:
        import importlib.metadata as md

        try:
            version = md.version("simcore")
        except md.PackageNotFoundError:
            version = None
        return {"version": version, "auth_required": cfg.token is not None,
                "runs_dir": str(manager.runs_dir), "max_runs": cfg.max_runs,
                "max_upload_bytes": cfg.max_upload_bytes, "max_agents": cfg.max_agents, "max_steps": cfg.max_steps,
                "modes": list(MODES)}

    @api.get("/scenarios", summary="Built-in scenarios")
    def list_scenarios() -> list[dict[str, Any]]:
        out = []
        for name in builtin_names():
            sc = validate(parse_yaml((builtin_dir() / f"{name}.yaml").read_text(), name))
            out.append({"name": name, "description": sc.description, "agents": sc.population.size,
                        "steps": sc.run.steps, "model": sc.model.kind,
                        "scheduled_params": list(REGISTRY.entry_for(sc).scheduled_params(sc))})
        return out

    @api.get("/scenarios/{name}", summary="A built-in scenario's YAML text", responses={**YAML_200, **ERR_404})
    def get_scenario(name: str):
        if name not in builtin_names():
            raise not_found("built-in scenario")
        return PlainTextResponse((builtin_dir() / f"{name}.yaml").read_text(), media_type="application/yaml")

    @control.post("/scenarios/validate", summary="Validate a scenario exactly like `simcore validate`",
                  response_model=ValidateResponse, responses=ERR_422)
    def validate_scenario(req: ScenarioRequest):
        sc, _ = load_request(req, cfg)
        return ValidateResponse(ok=True, name=sc.name, model=sc.model.kind, agents=sc.population.size,
                                steps=sc.run.steps, scheduled_params=list(REGISTRY.entry_for(sc).scheduled_params(sc)),
                                scenario=sc.model_dump(mode="json"))

    # -- runs ----------------------------------------------------------------------------------
    @api.get("/runs", summary="Runs, live and past (from manifest.json files)", response_model=list[RunSummary])
    def list_runs():
        return manager.list_runs()

    @control.post("/runs", status_code=201, summary="Start a run", response_model=RunSummary,
                  responses={**ERR_422, 429: {"model": Message, "description": "too many concurrent runs"}})
    def start_run(req: StartRequest):
        sc, source = load_request(req, cfg)
        try:
            ctl = manager.start(sc, source=source, overrides=req.overrides, start_paused=req.start_paused)
        except RunLimitError as exc:
            raise ApiError(429, str(exc)) from None
        return JSONResponse(ctl.summary(), 201, headers={"Location": f"/api/runs/{ctl.id}"})

    @api.get("/runs/{run_id}", summary="One run: status, step, schedule, live interventions, columns",
             responses=ERR_404)
    def get_run(run_id: str) -> dict[str, Any]:
        return run_detail(run_id)

    @control.post("/runs/{run_id}/pause", response_model=ControlResponse, responses={**ERR_404, **ERR_409})
    def pause(run_id: str):
        return control_call(live_or_error(run_id), "pause")

    @control.post("/runs/{run_id}/resume", summary="Unpause a live run; continue a finished or killed one from "
                  "its latest checkpoint", response_model=ControlResponse, responses={**ERR_404, **ERR_409, **ERR_422})
    def resume(run_id: str):
        ctl = manager.get_live(run_id)
        if ctl is not None and ctl.active:
            return control_call(ctl, "resume")
        try:
            ctl = manager.resume(run_id)
        except KeyError:
            raise not_found() from None
        except RunError as exc:
            raise ApiError(409, str(exc)) from None
        except RunLimitError as exc:
            raise ApiError(429, str(exc)) from None
        return JSONResponse({"applied": True, "result": {"resumed": True}, "run": ctl.summary()})

    @control.post("/runs/{run_id}/step", summary="Run n steps of a paused run, then stay paused",
                  response_model=ControlResponse, responses={**ERR_404, **ERR_409, **ERR_422})
    def step(run_id: str, req: StepRequest | None = None):
        return control_call(live_or_error(run_id), "step", n=(req.n if req else 1))

    @control.post("/runs/{run_id}/stop", summary="Stop; files are flushed, status 'stopped'",
                  response_model=ControlResponse, responses={**ERR_404, **ERR_409})
    def stop(run_id: str):
        return control_call(live_or_error(run_id), "stop")

    @control.post("/runs/{run_id}/interventions", summary="Change a scheduled parameter from the next step on",
                  response_model=ControlResponse, responses={**ERR_404, **ERR_409, **ERR_422})
    def intervene(run_id: str, req: InterventionRequest):
        ctl = live_or_error(run_id)
        names = REGISTRY.entry_for(ctl.scenario).scheduled_params(ctl.scenario)
        if req.param not in names:
            raise ScenarioError("param", f"unknown parameter {req.param!r} for model {ctl.scenario.model.kind!r} "
                                         f"(scheduled: {', '.join(names)})")
        return control_call(ctl, "intervene", param=req.param, value=req.value, mode=req.mode, start=req.start,
                            end=req.end)

    @api.get("/runs/{run_id}/interventions", summary="Live interventions applied to a run", responses=ERR_404)
    def list_interventions(run_id: str) -> list[dict[str, Any]]:
        return run_detail(run_id)["live_interventions"]

    @control.post("/runs/{run_id}/interviews", summary="Ask an agent or archetype of a run a question at a step "
                  "(restored from the run's checkpoints on disk; a live run is not disturbed)",
                  status_code=201, responses={**ERR_404, **ERR_422})
    def interview(run_id: str, req: InterviewRequest) -> dict[str, Any]:
        d = run_dir_or_404(run_id)
        if d is None:
            raise ApiError(409, "the run is still building: no checkpoint yet")
        backend = cfg.interview_backend
        if req.backend is not None:
            if not cfg.trust_policy_backends:
                raise ScenarioError("backend", "not accepted over HTTP (the run's own policy backend answers)")
            backend = req.backend
        from simcore.session import interview as session_interview  # JAX: imported when first asked

        with interview_lock:  # one interview at a time: each appends to the run's interviews table
            return session_interview(d, req.step, req.question, agent=req.agent, archetype=req.archetype,
                                     options=req.options, max_tokens=req.max_tokens, backend=backend)

    @api.get("/runs/{run_id}/interviews", summary="A run's interviews, oldest first", responses=ERR_404)
    def list_interviews_(run_id: str) -> list[dict[str, Any]]:
        from simcore.session import read_interviews  # the interviews table has one reader

        d = run_dir_or_404(run_id)
        return read_interviews(d) if d is not None else []

    @api.get("/runs/{run_id}/metrics", summary="Per-step metrics from metrics.parquet",
             responses={200: {"content": {"application/json": {}, "text/csv": {"schema": {"type": "string"}}},
                              "description": "columns as lists (JSON) or CSV"}, **ERR_404, **ERR_422})
    def metrics(run_id: str,
                start: int | None = Query(None, ge=0, description="first step (inclusive)"),
                end: int | None = Query(None, ge=0, description="last step (exclusive)"),
                columns: str | None = Query(None, max_length=10_000, description="comma-separated column names"),
                format: Literal["json", "csv"] = "json"):
        d = run_dir_or_404(run_id)
        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        table = data.read_metrics(d, start=start, end=end, columns=cols) if d is not None else data.empty_metrics()
        if format == "csv":
            import pyarrow.csv as pacsv

            buf = io.BytesIO()
            pacsv.write_csv(table, buf)
            return Response(buf.getvalue(), media_type="text/csv")
        return {"run_id": run_id, "rows": table.num_rows, "columns": data.table_to_columns(table)}

    @api.get("/runs/{run_id}/agents", summary="Sampled agents at a step (agents/ partitions)",
             responses={**ERR_404, **ERR_422})
    def agents(run_id: str, step: int | None = Query(None, ge=0, description="default: the latest sampled step"),
               offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=5000),
               state: str | None = Query(None, max_length=64,
                                         description="only agents in this state (the model's agent_state column)")):
        d = run_dir_or_404(run_id)
        steps = rundir.agent_steps(d) if d is not None else []
        if not steps:
            return {"steps": [], "step": None, "total": 0, "offset": 0, "columns": {}}
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ScenarioError("step", f"no sample at step {step} (sampled: every {steps[1] - steps[0] if len(steps) > 1 else '?'} steps, "
                                        f"{steps[0]}..{steps[-1]})")
        m = manager.manifest(run_id) or {}
        return {"steps": steps, **data.read_agents(d, step, m.get("labels", {}), offset=offset, limit=limit,
                                                   state=state, state_column=data.model_view(m)["agent_state"])}

    @api.get("/runs/{run_id}/network", summary="A sampled subgraph (<= 150 agents) of the model's graph (contact "
             "layers, follow rows) with layout and node states",
             responses={**ERR_404, **ERR_409})
    def network(run_id: str):
        ctl = manager.get_live(run_id)
        if ctl is None:  # a past run: the view its session wrote to the run directory
            d = run_dir_or_404(run_id)
            view = rundir.read_network(d)
            if view is None:
                m = manager.manifest(run_id) or {}
                raise ApiError(409, m.get("network_error") or "this run recorded no network view")
            return view
        view = ctl.network_view()
        if view is None:
            raise ApiError(409, ctl.network_error or "the network view is not ready yet (run is building)")
        return view

    @api.get("/runs/{run_id}/scenario.yaml", summary="The scenario that reproduces this run, live interventions included",
             responses={**YAML_200, **ERR_404})
    def reproduce(run_id: str):
        ctl = manager.get_live(run_id)
        if ctl is not None:  # also before the manifest exists
            m = {"scenario": ctl.scenario.model_dump(mode="json"), "steps": ctl.steps, "seed": ctl.seed,
                 "live_interventions": list(ctl.live_interventions)}
        else:
            run_dir_or_404(run_id)
            m = manager.manifest(run_id)
            if not m or "scenario" not in m:
                raise not_found("manifest")
        sc = data.reproducible_scenario(m)
        return PlainTextResponse(yaml.safe_dump(sc, sort_keys=False), media_type="application/yaml")

    @api.get("/runs/{run_id}/files", summary="Files of a run", responses=ERR_404)
    def files(run_id: str) -> list[dict[str, Any]]:
        d = run_dir_or_404(run_id)
        return data.list_files(d) if d is not None else []

    @api.get("/runs/{run_id}/files/{path:path}", summary="Download one file of a run",
             responses={200: {"content": {"application/octet-stream": {}, "application/json": {}},
                              "description": "the file"}, **ERR_404})
    def download(run_id: str, path: str):
        d = run_dir_or_404(run_id)
        f = data.safe_file(d, path) if d is not None else None
        if f is None:
            raise not_found("file")
        return FileResponse(f, filename=f.name)

    @api.get("/runs/{run_id}/archive.zip", summary="All files of a run as one zip",
             responses={200: {"content": {"application/zip": {}}, "description": "zip of the run directory"},
                        **ERR_404, **ERR_409})
    def archive(run_id: str):
        d = run_dir_or_404(run_id)
        if d is None:
            raise ApiError(409, "the run has no files yet (still building)")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:  # parquet is already compressed
            for entry in data.list_files(d):
                f = data.safe_file(d, entry["path"])
                if f is not None:
                    zf.write(f, f"{run_id}/{entry['path']}")
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{run_id}.zip"'})

    # -- the live stream ---------------------------------------------------------------------------
    @api.get("/runs/{run_id}/stream", summary="Server-Sent Events: 'history' (rows so far), then 'metrics' "
             "(new rows, in step order), 'status' on changes, 'end' when the run is over",
             responses={200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
                        **ERR_404, **ERR_422})
    async def stream(request: Request, run_id: str,
                     from_step: int = Query(0, ge=0, description="skip rows before this step"),
                     columns: str | None = Query(None, max_length=10_000,
                                                 description="comma-separated columns (default: all)"),
                     interval: float = Query(0.1, ge=0, le=10,
                                             description="minimum seconds between events (rows are batched)")):
        ctl = manager.get_live(run_id)
        d = manager.run_dir(run_id)
        if ctl is None and d is None:
            raise not_found()
        cols = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        last = request.headers.get("last-event-id", "")
        if last.lstrip("-").isdigit():  # reconnecting EventSource: continue after what it has
            from_step = max(from_step, int(last) + 1)
        if ctl is not None and not ctl.hub.released:
            events = _live_events(ctl, from_step, cols, interval, manager)
        else:  # over (or from disk): everything is in metrics.parquet
            table = await run_in_threadpool(data.read_metrics, d, start=from_step, columns=cols)
            events = _past_events(run_id, table, manager)
        return EventSourceResponse(events, ping=15, send_timeout=30)

    app.include_router(api)
    app.include_router(control)

    # -- the page ----------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_bundle():
        return FileResponse(plotly_js(), media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _rows_event(hub, start: int, stop: int, cols: list[str] | None, kind: str):
    return ServerSentEvent(data=hub.payload(start, stop, cols), event=kind, id=str(stop - 1))


def _status_payload(ctl: RunController) -> str:
    return json.dumps({"status": ctl.status, "step": ctl.step, "steps": ctl.steps, "error": ctl.error,
                       "steps_per_second": ctl.steps_per_second,
                       "live_interventions": ctl.live_interventions, "schedule_now": ctl.schedule_now})


async def _live_events(ctl: RunController, from_step: int, cols: list[str] | None, interval: float,
                       manager: RunManager):
    hub = ctl.hub
    if hub.released:  # the run ended and let go of its rows between the request and now
        table = await run_in_threadpool(data.read_metrics, ctl.dir, start=from_step, columns=None)
        if cols:
            table = table.select(["step", *[c for c in cols if c in table.column_names and c != "step"]])
        async for event in _past_events(ctl.id, table, manager):
            yield event
        return
    hub.subscribers += 1
    try:
        cursor = min(from_step, hub.n)  # row i is step i
        first = True
        seen_status = None
        status_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            version = hub.version
            n = hub.n
            if first or n > cursor:
                yield _rows_event(hub, cursor, n, cols, "history" if first else "metrics")
                cursor, first = n, False
            # on a change of state, plus a refresh (speed, step) every 2 s; rows carry the step anyway
            key = (ctl.status, len(ctl.live_interventions))
            if key != seen_status or (ctl.status == "running" and loop.time() - status_at >= 2.0):
                seen_status, status_at = key, loop.time()
                yield ServerSentEvent(data=_status_payload(ctl), event="status")
            if ctl.status in FINISHED and cursor >= hub.n:
                yield ServerSentEvent(data=json.dumps({"status": ctl.status}), event="end")
                return
            await hub.wait(version, timeout=10.0)
            if interval:
                # Batch rows for this client, waking on a shared clock tick: subscribers then ask for
                # the same slices, and the hub serialises each slice once for all of them.
                await asyncio.sleep(interval - loop.time() % interval)
    finally:
        hub.subscribers -= 1
        hub.release_if_idle()


async def _past_events(run_id: str, table, manager: RunManager):
    cols = data.table_to_columns(table)
    names = list(cols)
    rows = [dict(zip(names, vals)) for vals in zip(*cols.values())]
    last = rows[-1]["step"] if rows else -1
    yield ServerSentEvent(data=json.dumps(rows, separators=(",", ":")), event="history", id=str(last))
    m = manager.manifest(run_id) or {}
    yield ServerSentEvent(data=json.dumps({"status": m.get("status"), "step": m.get("steps_done"),
                                           "steps": m.get("steps"),
                                           "live_interventions": m.get("live_interventions", [])}), event="status")
    yield ServerSentEvent(data=json.dumps({"status": m.get("status")}), event="end")


def enable_compile_cache(path: str) -> None:
    """Persist compiled XLA programs so a second run of a scenario skips its compile (tens of seconds on CPU)."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user configured one: keep it
        return
    if not Path(path).exists():
        Path(path).mkdir(parents=True, mode=0o700)  # the cache is trusted code: keep it private
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def default_compile_cache() -> str:
    return os.environ.get("SIMCORE_JAX_CACHE") or str(Path.home() / ".cache" / "simcore" / "jax")
