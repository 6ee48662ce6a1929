"""MLflow tracking: the one module that talks to MLflow.

Every stage opens one run (`stage_run`) that records its params, metrics (per epoch where there are
epochs) and figures. Runs are tagged with the stage, the git commit, the DVC experiment name and
baseline, and grouped under one parent run per pipeline execution (tag `xai.pipeline`): one
`dvc exp run` experiment, or one `dvc repro` invocation. The parent run carries the flattened
params.yaml and each stage's headline metrics (`<stage>.<metric>`), and the experiment keeps a
runs-table view of the params that differ and those metrics (`runs_url` opens it), so pipelines and
`dvc exp` sweeps compare side by side without expanding. The default store is sqlite `mlflow.db` at
the project root as an absolute URI, so queued experiments in temporary folders log to the same
store; `tracking.uri` may name a server instead, which is probed first so an unreachable server
fails within `tracking.timeout_s` instead of hanging.

A store that fails once the stage has started (the server goes away mid-stage, or the database
behind a live server does) does not fail the stage: the first failure prints one "tracking lost"
warning naming the run and what it no longer gets, every later MLflow call is skipped, and the
stage writes its DVC outputs and exits 0; its MLflow run is left unfinished. A store whose disk
fills up counts the same: the sqlite store's "database or disk is full" (wrapped by MLflow or raw
from sqlite3 or SQLAlchemy) and a file store's or artifact store's ENOSPC. A server that answers
with an error (its database down: HTTP 503) is asked once more for its own words, which the
message quotes instead of the client's "too many 503 error responses".
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from xai.errors import TrackingError
from xai.io import file_md5
from xai.pipeline.config import Config, TrackingConfig, flatten, load_config
from xai.pipeline.paths import project_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

OUTPUT_TAG = "xai.output."
PIPELINE_TAG = "xai.pipeline"
#: MLflow's experiment type: a machine-learning experiment (runs), not a GenAI one (traces).
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
#: A view of the runs table the MLflow UI opens from a link (`runs_url`): an experiment tag
#: `mlflow.sharedViewState.<key>` holding the columns to show.
VIEW_KEY = "xai-pipelines"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: Params shown in the view even when every pipeline has the same value.
VIEW_PARAMS = ("preset.data", "preset.recipe", "data.dataset", "blackbox.source", "vibi.k",
               "vibi.beta")
#: Tags naming the presets a pipeline's params.yaml was composed from (`conf/`), by param.
PRESET_TAGS = {"xai.data": "preset.data", "xai.recipe": "preset.recipe"}
#: Headline metrics of the parent runs shown in the view; {k} is the pipeline's vibi.k.
VIEW_METRICS = ("train_blackbox.test_accuracy", "train_l2x.posthoc_accuracy",
                "train_vibi.posthoc_accuracy", "evaluate.vibi.fidelity_k{k}",
                "evaluate.vibi.insertion_auc_road", "evaluate.l2x.fidelity_k{k}",
                "evaluate.saliency.fidelity_k{k}")
ROLE_TAG = "xai.role"
STAGE_TAG = "xai.stage"


def tracking_uri(cfg: TrackingConfig) -> str:
    """The configured URI, or sqlite `mlflow.db` at the project root as an absolute URI."""
    return cfg.uri or f"sqlite:///{project_root() / 'mlflow.db'}"


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/"))


def check_reachable(uri: str, timeout_s: float) -> None:
    """Fail fast with a message naming `uri` when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 404 or exc.code >= 500:  # a proxy or another service, not MLflow
            raise TrackingError(
                f"{uri} answered HTTP {exc.code} to /health: not a working MLflow tracking "
                "server; fix tracking.uri or set tracking.enabled: false"
            ) from None
        # any other answer (401, 403, ...) is an MLflow server behind auth: its business
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, fix tracking.uri, "
            "or set tracking.enabled: false to run without tracking"
        ) from None


def server_says(uri: str, timeout_s: float = 10) -> str:
    """What an HTTP tracking server answers, in one line, when a request that reads its store
    fails with a 5xx and MLflow's JSON error (e.g. "HTTP 503 TEMPORARILY_UNAVAILABLE:
    (psycopg.OperationalError) connection failed: ..." when its database is down); "" when it
    answers well, otherwise or not at all, or `uri` is not a server."""
    if not uri.startswith(("http://", "https://")):
        return ""
    url = f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
    except urllib.error.HTTPError as exc:
        if exc.code < 500:  # 404: no such experiment, the store works; 401/403: auth's business
            return ""
        try:
            answer = json.loads(exc.read().decode(errors="replace"))
            words = f"{answer['error_code']}: {answer.get('message', '')}"
        except (ValueError, TypeError, KeyError):
            return ""  # not MLflow's words: the client's message says as much
        line = " ".join(words.split()).split(" (Background on this error")[0][:300]
        return f"HTTP {exc.code} {line}"
    except (urllib.error.URLError, OSError):
        return ""
    return ""


def now_ms() -> int:
    """Wall-clock time in milliseconds, MLflow's metric timestamp."""
    return int(time.time() * 1000)


def _store_failure(exc: BaseException) -> bool:
    """Whether `exc` is the tracking store failing (unreachable, refusing, its disk full), not a
    bug of ours: MLflow's errors, OSError (ENOSPC included), and the sqlite store's database
    errors when they come unwrapped (sqlite3's or SQLAlchemy's "database or disk is full")."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (MlflowException, OSError, sqlite3.Error, SQLAlchemyError))


def _log_metrics_to(client: Any, run_id: str,
                    entries: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
    """Log (step, metrics, time in ms) entries to a run in as few requests as MLflow allows."""
    from mlflow.entities import Metric

    items = [Metric(k, float(v), stamp, step) for step, metrics, stamp in entries
             for k, v in metrics.items()]
    for i in range(0, len(items), 1000):  # MLflow's per-batch limit
        client.log_batch(run_id, metrics=items[i:i + 1000])


_Method = TypeVar("_Method", bound=Callable[..., Any])
_Result = TypeVar("_Result")


#: What a `Run` method logs, for the "tracking lost" warning: what the run no longer gets.
LOGS = {"log_params": "params", "log_metrics": "metrics", "log_metric_steps": "metrics",
        "log_headline": "result metrics", "set_tags": "tags", "log_artifact": "artifacts",
        "log_image": "images", "tag_outputs": "output tags",
        "log_to_producer": "artifacts for the run that made its input"}


def _lost_what(name: str, args: tuple[Any, ...]) -> str:
    """`LOGS[name]`, with the first step or file the failed call was logging."""
    what = LOGS.get(name, name)
    if name == "log_metric_steps" and args and args[0]:
        what += f" from step {args[0][0][0]} on"
    elif name == "log_artifact" and args:
        what += f" from {Path(args[0]).as_posix()} on"
    return what


def _tolerant(method: _Method) -> _Method:
    """A `Run` method that, once the store has failed mid-stage, warns once and does nothing."""
    @functools.wraps(method)
    def call(self: Run, *args: Any, **kwargs: Any) -> Any:
        if self.lost is None:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - only store failures are swallowed
                if not _store_failure(exc):
                    raise
                self.lose(exc, _lost_what(method.__name__, args))
        return False if method.__name__ == "log_to_producer" else None
    return call  # type: ignore[return-value]


class Run:
    """A live MLflow run: params, metrics by step, tags and artifacts; `parent_id` is its
    pipeline's parent run and `stage` the prefix of its headline metrics there."""

    def __init__(self, client: Any, run_id: str, parent_id: str = "", stage: str = "") -> None:
        self._client = client
        self.run_id = run_id
        self.parent_id = parent_id
        self.stage = stage
        self.lost: str | None = None  # why the store stopped answering mid-stage

    def lose(self, exc: BaseException, what: str) -> None:
        """Stop tracking after a store failure, with one warning on stderr naming the run and
        `what` it no longer gets (everything after that is skipped too)."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        uri = getattr(self._client, "tracking_uri", "")
        first = server_says(uri, timeout_s=5) or first
        self.lost = first
        name = f"run {self.run_id}" + (f" (stage {self.stage})" if self.stage else "")
        print(f"warning: tracking lost: the MLflow store {uri} failed mid-stage ({first[:300]}); "
              f"not logged: {what} of {name} and everything after (the run stays unfinished); "
              "the stage goes on without it and writes its DVC outputs",
              file=sys.stderr, flush=True)

    @_tolerant
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-batch limit
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    @_tolerant
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_metric_steps([(step or 0, metrics, now_ms())])

    @_tolerant
    def log_metric_steps(self, entries: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        """Log (step, metrics, time in ms) entries recorded earlier in as few requests as MLflow
        allows (1000 per batch), each with the time it was recorded."""
        _log_metrics_to(self._client, self.run_id, entries)

    @_tolerant
    def log_headline(self, metrics: Mapping[str, float]) -> None:
        """Log a stage's result metrics, and copy them to the parent run as `<stage>.<metric>`
        (the runs table's columns for comparing pipelines)."""
        self.log_metrics(metrics)
        if self.parent_id:
            prefixed = {f"{self.stage}.{k}": v for k, v in metrics.items()}
            _log_metrics_to(self._client, self.parent_id, [(0, prefixed, now_ms())])

    @_tolerant
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    @_tolerant
    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Copy a file (a figure, a table) into the run's artifacts, under `folder` if given."""
        self._client.log_artifact(self.run_id, str(path), folder)

    @_tolerant
    def log_image(self, png: bytes, key: str, step: int) -> None:
        """Log a PNG image as step `step` of the image series `key` (MLflow's stepped images,
        stored under `images/`; the run page's image view steps through them)."""
        from PIL import Image

        with Image.open(io.BytesIO(png)) as image:
            image.load()
            self._client.log_image(self.run_id, image, key=key, step=step)

    @_tolerant
    def tag_outputs(self, *paths: str | Path) -> None:
        """Record the md5 of output files, so later stages can find the run that made them."""
        self.set_tags({f"{OUTPUT_TAG}{Path(p).as_posix()}": file_md5(p) for p in paths})

    @_tolerant
    def log_to_producer(self, output: str | Path, artifact: str | Path, folder: str) -> bool:
        """Also log `artifact` to the run that wrote `output` (as it is now); False if none."""
        producer = find_producer(self._client, output)
        if producer is None:
            return False
        self._client.log_artifact(producer.info.run_id, str(artifact), folder)
        return True

    @_tolerant
    def use_client(self, action: Callable[[Any, Run], _Result]) -> _Result | None:
        """`action(client, run)` on this run's store, tolerant like every call here: what a
        module of its own does with MLflow (`xai.pipeline.serving` logs and registers models)."""
        return action(self._client, self)


class NullRun(Run):
    """Stands in for a run when tracking is off: every call does nothing."""

    def __init__(self) -> None:
        self.run_id = ""
        self.lost = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_metric_steps(self, entries: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        pass

    def log_headline(self, metrics: Mapping[str, float]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def log_image(self, png: bytes, key: str, step: int) -> None:
        pass

    def tag_outputs(self, *paths: str | Path) -> None:
        pass

    def log_to_producer(self, output: str | Path, artifact: str | Path, folder: str) -> bool:
        return False

    def use_client(self, action: Callable[[Any, Run], _Result]) -> _Result | None:
        return None


class _NoStoreTracebacks(logging.Filter):
    """Drops the traceback MLflow's sqlite store logs for a failed database session (a full disk,
    a locked file) before raising it as an MlflowException: that exception is what the stage
    reports, in one line (the "tracking lost" warning or a TrackingError)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and record.levelno >= logging.ERROR)


def _quiet_store_tracebacks() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _NoStoreTracebacks) for f in logger.filters):
        logger.addFilter(_NoStoreTracebacks())


def client_for(cfg: TrackingConfig) -> Any:
    """An MlflowClient on the configured store, after checking that it is reachable."""
    _quiet_store_tracebacks()
    uri = tracking_uri(cfg)
    check_reachable(uri, cfg.timeout_s)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(cfg.timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, cfg: TrackingConfig) -> str:
    """Get or create the experiment, tagged as a machine-learning experiment; local stores keep
    artifacts beside the sqlite file."""
    found = client.get_experiment_by_name(cfg.experiment)
    if found is not None:
        if found.tags.get(KIND_TAG) is None:  # made before the tag, or by someone else
            client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
        return found.experiment_id
    location = None
    if _is_local(tracking_uri(cfg)):
        location = (project_root() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location,
                                        tags={KIND_TAG: KIND})
    except Exception:  # noqa: BLE001 - a parallel run may have created it just now
        found = client.get_experiment_by_name(cfg.experiment)
        if found is None:
            raise
        return found.experiment_id


def update_runs_view(client: Any, exp_id: str, k: Any) -> None:
    """Point the experiment's runs view at what tells pipelines apart: the params that differ
    between its parent runs (and `VIEW_PARAMS`) and the headline metrics (`VIEW_METRICS`)."""
    query = f"tags.`{ROLE_TAG}` = 'pipeline'"
    parents = client.search_runs([exp_id], filter_string=query, max_results=500)
    keys = sorted({key for run in parents for key in run.data.params})
    differing = [key for key in keys if key not in VIEW_PARAMS  # among runs that logged it
                 and len({run.data.params[key] for run in parents if key in run.data.params}) > 1]
    columns = ([f"params.`{key}`" for key in (*VIEW_PARAMS, *differing)]
               + [f"metrics.`{name.format(k=k)}`" for name in VIEW_METRICS])
    view = {"selectedColumns": columns, "orderByKey": "attributes.start_time",
            "orderByAsc": False}
    client.set_experiment_tag(exp_id, VIEW_TAG, json.dumps(view))


def runs_url(experiment: str, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI address that opens `experiment` on its runs table with the pipelines' view
    (MLflow 3's UI otherwise opens on its GenAI overview: the UI-wide workflow type, not the
    experiment's kind tag, decides)."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def pipeline_id() -> str:
    """One id per pipeline execution: `XAI_PIPELINE_ID`, the DVC experiment, the `dvc` process."""
    if os.environ.get("XAI_PIPELINE_ID"):
        return os.environ["XAI_PIPELINE_ID"]
    if os.environ.get("DVC_EXP_NAME"):
        return f"exp-{os.environ['DVC_EXP_NAME']}-{os.environ.get('DVC_EXP_BASELINE_REV', '')[:7]}"
    import psutil

    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().parents():
            cmd = " ".join(proc.cmdline()[:3])
            if "dvc" in cmd and ("repro" in cmd or " exp" in cmd):
                return f"repro-{proc.pid}-{int(proc.create_time())}"
    return f"run-{uuid.uuid4().hex[:12]}"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def run_tags(stage: str, pipeline: str) -> dict[str, str]:
    """Tags that make a stage run findable: stage, commit, DVC experiment, pipeline."""
    tags = {
        STAGE_TAG: stage,
        PIPELINE_TAG: pipeline,
        "mlflow.source.git.commit": _git("rev-parse", "HEAD"),
        "xai.git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "dvc.stage": os.environ.get("DVC_STAGE", ""),
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }
    return {k: v for k, v in tags.items() if v}


def _parent_run(client: Any, exp_id: str, pipeline: str, tags: dict[str, str],
                pipeline_params: Mapping[str, Any]) -> str:
    """The parent run of this pipeline execution, created by its first stage; it carries the
    pipeline's params (each logged once: a param cannot change in MLflow)."""
    query = f"tags.`{PIPELINE_TAG}` = '{pipeline}' and tags.`{ROLE_TAG}` = 'pipeline'"
    found = client.search_runs([exp_id], filter_string=query, max_results=1)
    if found:
        run_id, logged = found[0].info.run_id, found[0].data.params
        client.update_run(run_id, status="RUNNING")
    else:
        parent_tags = {k: v for k, v in tags.items() if k not in (STAGE_TAG, "dvc.stage")}
        parent_tags[ROLE_TAG] = "pipeline"
        name = os.environ.get("DVC_EXP_NAME") or f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"
        run_id, logged = client.create_run(exp_id, tags=parent_tags, run_name=name).info.run_id, {}
    Run(client, run_id).log_params({k: v for k, v in pipeline_params.items() if k not in logged})
    if not found:  # a new pipeline: the params that tell pipelines apart may have changed
        update_runs_view(client, exp_id, pipeline_params.get("vibi.k", ""))
    return run_id


def _open_run(cfg: TrackingConfig, stage: str, params: Mapping[str, Any],
              pipeline_params: Mapping[str, Any] | None = None) -> tuple[Any, Run, str]:
    """Client, the stage's run (params logged) and its parent (carrying `pipeline_params`); a
    store error is a TrackingError."""
    try:
        client = client_for(cfg)
        exp_id = experiment_id(client, cfg)
        pipeline = pipeline_id()
        tags = run_tags(stage, pipeline)
        tags.update({tag: str(pipeline_params[key]) for tag, key in PRESET_TAGS.items()
                     if (pipeline_params or {}).get(key) is not None})
        parent = _parent_run(client, exp_id, pipeline, tags, pipeline_params or {})
        tags["mlflow.parentRunId"] = parent
        run = Run(client, client.create_run(exp_id, tags=tags, run_name=stage).info.run_id,
                  parent, stage)
        run.log_params(params)
    except Exception as exc:  # noqa: BLE001 - only store failures become a TrackingError
        if not _store_failure(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        says = server_says(tracking_uri(cfg), min(cfg.timeout_s, 10))
        if says:
            raise TrackingError(f"MLflow tracking server {tracking_uri(cfg)} answers but its store "
                                f"fails: {says}; start the server's database, or set "
                                "tracking.enabled: false to run without tracking") from None
        raise TrackingError(f"MLflow tracking store {tracking_uri(cfg)} failed: {first}; fix "
                            "tracking.uri or set tracking.enabled: false") from None
    return client, run, parent


def pipeline_params(cfg: Config) -> dict[str, Any]:
    """params.yaml flattened to dotted keys (without `tracking`), for the parent run."""
    return {k: v for k, v in flatten(cfg).items() if not k.startswith("tracking.")}


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, params: Mapping[str, Any], enabled: bool = True
              ) -> Iterator[Run]:
    """Open the MLflow run of one stage (a `NullRun` when tracking or `enabled` is off).

    `enabled=False` is for processes that must not log, such as non-zero ranks under torchrun.

    The run (and its pipeline's parent run) ends FINISHED on success, KILLED on an interrupt and
    FAILED on any other exception, which propagates.
    """
    if not (cfg.tracking.enabled and enabled):
        yield NullRun()
        return
    client, run, parent = _open_run(cfg.tracking, stage, params, pipeline_params(cfg))
    status = "FAILED"
    started = time.perf_counter()
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with contextlib.suppress(Exception):
            run.log_metrics({"stage_wall_seconds": time.perf_counter() - started})
        _terminate(run, client, [run.run_id, parent], status)


def _terminate(run: Run, client: Any, run_ids: list[str], status: str) -> None:
    """End the stage's runs; a store lost mid-stage leaves them as they are (see the module)."""
    for run_id in run_ids:
        if run.lost is not None:
            return
        try:
            client.set_terminated(run_id, status)
        except Exception as exc:  # noqa: BLE001 - only store failures are swallowed
            if not _store_failure(exc):
                raise
            run.lose(exc, "the end status")


def find_producer(client: Any, output: str | Path) -> Any | None:
    """The newest finished run tagged as having written `output` with its current md5."""
    key = f"{OUTPUT_TAG}{Path(output).as_posix()}"
    query = f"tags.`{key}` = '{file_md5(output)}' and attributes.status = 'FINISHED'"
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=query, max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def find_runs(cfg: TrackingConfig, filter_string: str = "") -> list[Any]:
    """MLflow runs of the configured experiment matching `filter_string` (newest first)."""
    client = client_for(cfg)
    found = client.get_experiment_by_name(cfg.experiment)
    if found is None:
        return []
    return list(client.search_runs([found.experiment_id], filter_string=filter_string,
                                   order_by=["attributes.start_time DESC"]))


@dataclass(frozen=True)
class RunRecord:
    """A finished or failed run as plain data, for code that must not touch MLflow itself."""

    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


def _record(run: Any) -> RunRecord:
    return RunRecord(run.info.run_id, run.info.run_name or "", run.info.status,
                     run.info.start_time or 0, dict(run.data.params), dict(run.data.metrics),
                     dict(run.data.tags))


def run_records(cfg: TrackingConfig, filter_string: str = "") -> list[RunRecord]:
    """`find_runs` as plain records (newest first)."""
    return [_record(r) for r in find_runs(cfg, filter_string)]


def producer_record(cfg: TrackingConfig, output: str | Path) -> RunRecord | None:
    """The run that wrote `output` as it is now, as a record; None when the file or run is unknown."""
    if not Path(output).is_file():
        return None
    run = find_producer(client_for(cfg), output)
    return None if run is None else _record(run)


def main(argv: list[str] | None = None) -> None:
    """Print the MLflow UI address of the configured experiment's runs table."""
    parser = argparse.ArgumentParser(description="The MLflow UI address of the runs table.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ui", default="http://127.0.0.1:5000", help="where `mlflow ui` serves")
    args = parser.parse_args(argv)
    cfg = load_config(args.params).tracking
    print(runs_url(experiment_id(client_for(cfg), cfg), args.ui))


if __name__ == "__main__":
    main()
