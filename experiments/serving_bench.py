"""The served explainer's speed: `mlflow models serve` of the VIBI explainer on 2 cores, measured
from HTTP clients on loopback, beside the same program in-process and the evaluation's cost of the
same explanation by integrated gradients and KernelSHAP (`timings/evaluate.json`).

    python experiments/serving_bench.py --model models:/xai-vibi@champion \\
        [--data data/prepared/images.pt] [--cores 0,1] [--workers 2] [--out serving_bench.json]

(`MLFLOW_TRACKING_URI` names the store that holds the model; the default is the project's
`mlflow.db`.) The server runs pinned to `--cores` (`taskset`) with `--workers` uvicorn workers
and one torch thread per request (`serving.threads`); the clients run on the same machine, on
the cores the server leaves, or beside it on a 2-core host. Cases, each after a warm-up:

- batch 1, one client: the latency a single caller sees (p50, p99) and its rate;
- batch 64, four clients: explanations per second at a full pipe, JSON and as a CSV table of
  pixel rows (the compact form MLflow's scoring server takes without an input schema);
- the load test: 8 concurrent clients x 50 requests of one image, every answer checked (no
  error, the same answer as alone) and the server still answering after it;

then, in this process on one thread, the served program alone at batch 1 and 64, and what the
scoring server does with one request of 64 images step by step (parse, predict, write): where
the time of a request goes.

Goals (docs/serving.md): >= 1,000 explanations/s at batch 64 and p99 < 50 ms at batch 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from xai.data.prepared import load_dataset  # noqa: E402
from xai.io import load_json, save_json  # noqa: E402
from xai.pipeline.bench import host, host_label  # noqa: E402
from xai.pipeline.serving import request_body  # noqa: E402
from xai.tensors import to_unit  # noqa: E402

JSON, CSV = "application/json", "text/csv"
#: The evaluation's methods whose in-process cost per image is set beside the served rate.
COMPARED = {"vibi": "VIBI", "integrated_gradients": "integrated gradients",
            "kernel_shap": "KernelSHAP"}


def csv_body(images: torch.Tensor) -> str:
    """Images as a CSV table, one row of C * H * W pixels per image (float32 values written
    exactly), the header the pixel indices."""
    x = to_unit(images).float().flatten(1).numpy()
    header = ",".join(map(str, range(x.shape[1])))
    return "\n".join([header, *(",".join(map(repr, row.tolist())) for row in x)]) + "\n"


def load(url: str, body: str, content_type: str, clients: int, requests: int,
         expected: bytes | None = None, timeout_s: float = 60) -> dict[str, object]:
    """`clients` threads, each sending `requests` POSTs of `body` to `url`/invocations over one
    kept-alive connection: requests per second, latency percentiles (ms), and the errors (an
    exception, a status other than 200, or an answer other than `expected` when given)."""
    host_, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    data = body.encode()

    def client() -> None:
        connection = http.client.HTTPConnection(host_, int(port), timeout=timeout_s)
        mine, failed = [], []
        for _ in range(requests):
            started = time.perf_counter()
            try:
                connection.request("POST", "/invocations", data,
                                   {"Content-Type": content_type})
                answer = connection.getresponse()
                content = answer.read()
                if answer.status != 200 or (expected is not None and content != expected):
                    failed.append(f"HTTP {answer.status}: {content[:200]!r}")
            except (OSError, http.client.HTTPException) as exc:
                failed.append(repr(exc))
                connection.close()
                connection = http.client.HTTPConnection(host_, int(port), timeout=timeout_s)
            mine.append(time.perf_counter() - started)
        connection.close()
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"clients": clients, "requests": clients * requests, "seconds": round(elapsed, 3),
            "requests_per_second": round(clients * requests / elapsed, 2),
            "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 2),
                           "p99": round(float(np.percentile(ms, 99)), 2),
                           "max": round(float(ms.max()), 2)},
            "errors": len(errors), "first_errors": errors[:3]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, log: Path, cores: str | None = None, workers: int = 1,
                 env: dict[str, str] | None = None, timeout_s: float = 300
                 ) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` of `model` on 127.0.0.1 at a free port (pinned to `cores` when
    given, with `env` added to the environment), in a process group of its own; returns once
    /ping answers."""
    port = _free_port()
    scripts = str(Path(sys.executable).parent)  # mlflow and the uvicorn it starts, unactivated
    command = [str(Path(scripts, "mlflow")), "models", "serve", "-m", model,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
               "--workers", str(workers)]
    with log.open("w") as out:
        proc = subprocess.Popen((["taskset", "-c", cores] if cores else []) + command,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                                     "PATH": os.pathsep.join([scripts, os.environ["PATH"]]),
                                     **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/ping", timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server's process group (uvicorn and its workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def in_process(model: str, images: torch.Tensor, seconds: float) -> dict[str, object]:
    """The served model's program called directly on one thread (what one request runs), at
    batch 1 and 64: explanations per second."""
    import mlflow.pyfunc

    program = mlflow.pyfunc.load_model(model).unwrap_python_model().program
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates = {}
    with torch.inference_mode():
        for n in (1, 64):
            x = to_unit(images[:n]).float()
            for _ in range(3):
                program(x)
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                program(x)
                done += n
            rates[f"batch_{n}"] = round(done / (time.perf_counter() - started), 1)
    torch.set_num_threads(threads)
    return {"threads": 1, "explanations_per_second": rates}


def server_work(model: str, bodies: dict[str, tuple[str, str]], reps: int = 20
                 ) -> dict[str, dict[str, float]]:
    """What the scoring server does with one request, step by step, in this process on one
    thread (median ms over `reps`): `parse` the body into an array (MLflow's JSON or CSV path),
    `predict` (the model's checks, its program, the records), `write` the JSON answer."""
    import io

    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    loaded = mlflow.pyfunc.load_model(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    steps = {}
    for name, (body, content_type) in bodies.items():
        def parse(body: str = body, content_type: str = content_type) -> object:
            if content_type == CSV:
                return scoring_server.parse_csv_input(io.StringIO(body))
            return scoring_server._parse_json_data(body, loaded.metadata, None).data

        data = parse()
        answer = loaded.predict(data)
        timed = {"parse": parse, "predict": lambda data=data: loaded.predict(data),
                 "write": lambda answer=answer: scoring_server.predictions_to_json(
                     answer, io.StringIO())}
        steps[name] = {}
        for step, call in timed.items():
            seconds = []
            for _ in range(reps):
                started = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - started)
            steps[name][step] = round(float(np.median(seconds)) * 1e3, 2)
    torch.set_num_threads(threads)
    return steps


def evaluation_costs(path: Path) -> dict[str, object]:
    """Seconds per image of `COMPARED` in-process, as the evaluation measured them."""
    cost = load_json(path)["cost"]["methods"]
    return {name: cost[name]["seconds_per_image"] for name in COMPARED}


# ------------------------------------------------------------------ the docs' blocks (tools/docs.py)

#: The benchmark's cases as the table names them.
CASES = {"batch_1_json": "batch 1, JSON", "batch_1_csv": "batch 1, CSV row",
         "batch_64_json": "batch 64, JSON", "batch_64_csv": "batch 64, CSV rows"}
GOALS = {"batch_64_per_second": 1000, "batch_1_p99_ms": 50}


def _served_row(name: str, case: dict) -> str:
    latency = case["latency_ms"]
    return (f"| {name} | {case['clients']} | {case['requests']} | "
            f"{case['explanations_per_second']:,.0f} | {latency['p50']:.1f} ms | "
            f"{latency['p99']:.1f} ms | {case['errors']} |")


def markdown(run: dict) -> str:
    """The served explainer's rates and latencies beside the same program in-process and the
    evaluation's in-process cost of the compared methods, with the goals met or not."""
    served, inside = run["served"], run["in_process"]["explanations_per_second"]
    load = served["load_test"]
    clients = ("the same cores" if run["host"]["cores"] <= len(run["server_cores"].split(","))
               else "the others")
    lines = [f"`{run['model']}` served by `mlflow models serve` with {run['workers']} workers "
             f"pinned to cores {run['server_cores']} of {host_label(run['host'])}, the clients on "
             f"{clients}; load average {run['load_average_before'][0]:.1f} before, "
             f"{run['load_average_after'][0]:.1f} after (`experiments/serving_bench.json`).", "",
             "| case | clients | requests | explanations/s | p50 latency | p99 latency | errors |",
             "|---|---|---|---|---|---|---|"]
    lines += [_served_row(label, served[key]) for key, label in CASES.items()]
    load_row = {**load, "explanations_per_second": load["requests_per_second"]}
    lines.append(_served_row("load test: batch 1, JSON, every answer checked", load_row))
    goal = GOALS["batch_64_per_second"]
    met = {True: "met", False: "not met"}
    forms = "; ".join(f"as {form} {met[rate >= goal]} ({rate:,.0f})" for form, rate in (
        (form, served[key]["explanations_per_second"])
        for form, key in (("JSON", "batch_64_json"), ("CSV rows", "batch_64_csv"))))
    p99 = served["batch_1_json"]["latency_ms"]["p99"]
    lines += ["", f"Goals on 2 cores: at least {goal:,} explanations/s at batch 64: {forms}. "
              f"p99 under {GOALS['batch_1_p99_ms']} ms at batch 1 (JSON): "
              f"{met[p99 < GOALS['batch_1_p99_ms']]} ({p99:.1f} ms). The load test ended "
              f"with {load['errors']} errors and the server "
              f"{'still answering' if load.get('answering_after') else 'not answering'}.", ""]
    sizes, work = run["request_bytes"], run["server_work_ms"]
    json64 = served["batch_64_json"]["explanations_per_second"]
    steps = work["batch_64_json"]
    largest = max(steps, key=steps.get)
    lines += [f"In-process on one thread, the served program explains {inside['batch_1']:,.0f} "
              f"images/s one at a time and {inside['batch_64']:,.0f} images/s in batches of 64; "
              f"served, the batches of 64 come at {json64 / inside['batch_64']:.0%} of that. What "
              "the scoring server does with one request of 64 images, step by step on one thread "
              "(milliseconds):", "",
              "| body | size | parse | predict | write the answer |", "|---|---|---|---|---|"]
    for key, form in (("batch_64_json", "JSON"), ("batch_64_csv", "CSV rows")):
        row = work[key]
        lines.append(f"| {form} | {sizes[key] / 1e6:.2f} MB | {row['parse']:.1f} | "
                     f"{row['predict']:.1f} | {row['write']:.1f} |")
    lines += ["", f"The largest step of a JSON request is `{largest}`"
              + (" (MLflow reads the JSON body into nested lists, copies them and makes an array "
                 "of them): the JSON input is the bound of the server's own work; CSV rows "
                 f"parse in {work['batch_64_csv']['parse'] / steps['parse']:.0%} of its time"
                 if largest == "parse" else "") + ".", ""]
    costs = run["evaluation_seconds_per_image"]
    lines += [f"Served at batch 64, the explainer's {json64:,.0f} explanations/s are "
              f"{json64 * costs['integrated_gradients']:.0f}x integrated gradients' and "
              f"{json64 * costs['kernel_shap']:.0f}x KernelSHAP's in-process rates, as "
              "the served model's own evaluation measured them on the same host "
              "(`timings/evaluate.json` of its pipeline):", "",
              "| method | seconds per image in-process | explanations/s in-process |",
              "|---|---|---|"]
    for key, name in COMPARED.items():
        lines.append(f"| {name} | {costs[key]:.2e} | {1 / costs[key]:,.0f} |")
    lines += ["", "Logging the explainer as an MLflow Model in its training stage (export, save, "
              "log, register) took " + ", ".join(
                  f"{seconds:.1f} s in `{stage}`"
                  for stage, seconds in run["model_log_seconds"].items())
              + " on the run that trained the served models."]
    return "\n".join(lines)


def answer_markdown(run: dict) -> str:
    """The served answer for one MNIST test image (the benchmark's first request), as a reader
    reads it: class and probability, the kept chunks with p(z | x), the mask rows."""
    example = run["example"]
    answer = example["answer"]
    p_z = [v for channel in answer["p_z"] for row in channel for v in row]
    chunks = ", ".join(f"{c} (p = {p_z[c]:.3f})" for c in answer["chunks"])
    mask = [row for channel in answer["mask"] for row in channel]
    return "\n".join([
        f"Test image {example['index']} (true class {example['true_class']}): `class` "
        f"{answer['class']} (`label` \"{answer['label']}\"), probability "
        f"{answer['probabilities'][answer['class']]:.4f}; `chunks` {chunks}, of "
        f"{len(p_z)} chunks whose p(z | x) sums to 1 (uniform: {1 / len(p_z):.3f}); `mask`, "
        "one string per pixel row, 1 where a kept chunk lies:", "", "```",
        *mask, "```"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models:/xai-vibi@champion",
                        help="the served model: a models:/ URI or a model folder")
    parser.add_argument("--data", default="data/prepared/images.pt", help="prepared image set")
    parser.add_argument("--evaluation-timings", default="timings/evaluate.json",
                        help="the evaluate stage's timings (its in-process costs per image)")
    parser.add_argument("--stage-timings", nargs="*",
                        default=["timings/l2x.json", "timings/vibi.json"],
                        help="the training stages' timings of the served models (what logging "
                             "the model cost them: model_log_seconds)")
    parser.add_argument("--cores", default="0,1", help="the server's cores (taskset -c)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--seconds", type=float, default=5, help="in-process timing per case")
    parser.add_argument("--out", default="experiments/serving_bench.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    test = load_dataset(args.data).test
    images = test.x[:64]
    one, batch, csv64 = request_body(images[:1]), request_body(images), csv_body(images)
    record: dict[str, object] = {
        "model": args.model, "data": args.data, "host": host(), "server_cores": args.cores,
        "workers": args.workers, "load_average_before": os.getloadavg(),
        "request_bytes": {"batch_1_json": len(one), "batch_64_json": len(batch),
                          "batch_64_csv": len(csv64)}}
    log = Path(tempfile.gettempdir()) / "serving_bench_server.log"
    proc, url = start_server(args.model, log, args.cores, args.workers)
    try:
        example = urllib.request.urlopen(urllib.request.Request(
            url + "/invocations", one.encode(), {"Content-Type": JSON}), timeout=60).read()
        record["example"] = {"index": 0, "true_class": int(test.y[0]),
                             "answer": json.loads(example)["predictions"][0]}
        cases = {"batch_1_json": (one, JSON, 1, 500),
                 "batch_64_json": (batch, JSON, 4, 25),
                 "batch_64_csv": (csv64, CSV, 4, 25),
                 "batch_1_csv": (csv_body(images[:1]), CSV, 1, 500)}
        results = {}
        for name, (body, content_type, clients, requests) in cases.items():
            load(url, body, content_type, clients, 5)  # warm-up
            n = 64 if "64" in name else 1
            result = load(url, body, content_type, clients, requests)
            result["explanations_per_second"] = round(result["requests_per_second"] * n, 1)
            results[name] = result
            print(name, json.dumps(result), flush=True)
        results["load_test"] = load(url, one, JSON, 8, 50, expected=example)
        urllib.request.urlopen(url + "/ping", timeout=10).close()
        results["load_test"]["answering_after"] = True
        print("load_test", json.dumps(results["load_test"]), flush=True)
    finally:
        stop_server(proc)
    record["served"] = results
    record["in_process"] = in_process(args.model, images, args.seconds)
    record["server_work_ms"] = server_work(args.model, {"batch_64_json": (batch, JSON),
                                                        "batch_64_csv": (csv64, CSV)})
    record["evaluation_seconds_per_image"] = evaluation_costs(Path(args.evaluation_timings))
    record["model_log_seconds"] = {f"train_{Path(path).stem}": load_json(path)["model_log_seconds"]
                                   for path in args.stage_timings}
    record["load_average_after"] = os.getloadavg()
    save_json(record, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
