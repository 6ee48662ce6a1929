"""MLflow tracking: the one module that talks to MLflow.

Every stage opens one run (`stage_run`) that records its params, metrics (per epoch where there are
epochs) and figures. Runs are tagged with the stage, the git commit, the DVC experiment name and
baseline, and grouped under one parent run per pipeline execution (tag `xai.pipeline`): one
`dvc exp run` experiment, or one `dvc repro` invocation. The default store is sqlite `mlflow.db` at
the project root as an absolute URI, so queued experiments in temporary folders log to the same
store; `tracking.uri` may name a server instead, which is probed first so an unreachable server
fails within `tracking.timeout_s` instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xai.pipeline.config import Config, TrackingConfig
from xai.errors import TrackingError
from xai.io import file_md5
from xai.pipeline.paths import project_root

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

OUTPUT_TAG = "xai.output."
PIPELINE_TAG = "xai.pipeline"
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


def now_ms() -> int:
    """Wall-clock time in milliseconds, MLflow's metric timestamp."""
    return int(time.time() * 1000)


class Run:
    """A live MLflow run: params, metrics by step, tags and artifacts."""

    def __init__(self, client: Any, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's per-batch limit
            self._client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_metric_steps([(step or 0, metrics, now_ms())])

    def log_metric_steps(self, entries: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        """Log (step, metrics, time in ms) entries recorded earlier in as few requests as MLflow
        allows (1000 per batch), each with the time it was recorded."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), stamp, step) for step, metrics, stamp in entries
                 for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self._client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Copy a file (a figure, a table) into the run's artifacts, under `folder` if given."""
        self._client.log_artifact(self.run_id, str(path), folder)

    def tag_outputs(self, *paths: str | Path) -> None:
        """Record the md5 of output files, so later stages can find the run that made them."""
        self.set_tags({f"{OUTPUT_TAG}{Path(p).as_posix()}": file_md5(p) for p in paths})

    def log_to_producer(self, output: str | Path, artifact: str | Path, folder: str) -> bool:
        """Also log `artifact` to the run that wrote `output` (as it is now); False if none."""
        producer = find_producer(self._client, output)
        if producer is None:
            return False
        self._client.log_artifact(producer.info.run_id, str(artifact), folder)
        return True


class NullRun(Run):
    """Stands in for a run when tracking is off: every call does nothing."""

    def __init__(self) -> None:
        self.run_id = ""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_metric_steps(self, entries: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def tag_outputs(self, *paths: str | Path) -> None:
        pass

    def log_to_producer(self, output: str | Path, artifact: str | Path, folder: str) -> bool:
        return False


def client_for(cfg: TrackingConfig) -> Any:
    """An MlflowClient on the configured store, after checking that it is reachable."""
    uri = tracking_uri(cfg)
    check_reachable(uri, cfg.timeout_s)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(cfg.timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, cfg: TrackingConfig) -> str:
    """Get or create the experiment; local stores keep artifacts beside the sqlite file."""
    found = client.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if _is_local(tracking_uri(cfg)):
        location = (project_root() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # noqa: BLE001 - a parallel run may have created it just now
        found = client.get_experiment_by_name(cfg.experiment)
        if found is None:
            raise
        return found.experiment_id


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


def _parent_run(client: Any, exp_id: str, pipeline: str, tags: dict[str, str]) -> str:
    """The parent run of this pipeline execution, created by its first stage."""
    query = f"tags.`{PIPELINE_TAG}` = '{pipeline}' and tags.`{ROLE_TAG}` = 'pipeline'"
    found = client.search_runs([exp_id], filter_string=query, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    parent_tags = {k: v for k, v in tags.items() if k not in (STAGE_TAG, "dvc.stage")}
    parent_tags[ROLE_TAG] = "pipeline"
    name = os.environ.get("DVC_EXP_NAME") or f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return client.create_run(exp_id, tags=parent_tags, run_name=name).info.run_id


def _open_run(cfg: TrackingConfig, stage: str, params: Mapping[str, Any]
              ) -> tuple[Any, Run, str]:
    """Client, the stage's run (params logged) and its parent; a store error is a TrackingError."""
    from mlflow.exceptions import MlflowException

    try:
        client = client_for(cfg)
        exp_id = experiment_id(client, cfg)
        pipeline = pipeline_id()
        tags = run_tags(stage, pipeline)
        parent = _parent_run(client, exp_id, pipeline, tags)
        tags["mlflow.parentRunId"] = parent
        run = Run(client, client.create_run(exp_id, tags=tags, run_name=stage).info.run_id)
        run.log_params(params)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"MLflow tracking store {tracking_uri(cfg)} failed: {first}; fix "
                            "tracking.uri or set tracking.enabled: false") from None
    return client, run, parent


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
    client, run, parent = _open_run(cfg.tracking, stage, params)
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
        client.set_terminated(run.run_id, status)
        client.set_terminated(parent, status)


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
