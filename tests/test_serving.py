"""The explainer where predictions are served: logged and registered by the training stages,
promoted by `evaluate`, served by a real `mlflow models serve` on loopback and checked against
the in-process `xai.VIBI`, bad requests refused with a 400 naming the problem, a bounded load.

One tiny pipeline (black box, L2X, VIBI, evaluate with tracking into a sqlite store in a
temporary folder) and one server serve every check of the module."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import xai
from stages import train_blackbox
from tests.conftest import ROOT, experiment, separable, write_params
from tests.test_evaluate import TINY_EVAL, run_evaluate
from tests.test_vibi_stage import VIBI
from tests.test_vibi_stage import run as run_vibi_stage
from xai.chunks import chunk_areas, expand
from xai.data.prepared import Dataset, save_dataset
from xai.explain.vibi import export, load_export
from xai.models.blackbox import Architecture, load_blackbox, save_blackbox
from xai.models.invertible import IMAGE_KIND, image_classifier, save_classifier
from xai.models.judge import Judge, save_judge
from xai.models.vibi import ExplainedPrediction, VibiModel, VibiSpec
from xai.pipeline import serving, tracking
from xai.pipeline.config import load_config

NAME = "tiny-vibi"
MAX_BATCH = 16
SERVED = {**VIBI, **TINY_EVAL, "serving.registered_model": NAME,
          "serving.max_batch": MAX_BATCH}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """train_blackbox, train_l2x, train_vibi and evaluate (untrained judge and invertible
    classifier) on tiny 8 x 8 images, tracked into a sqlite store beside them."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the store keeps its artifacts beside it
        patch.setenv("XAI_PIPELINE_ID", "served-pipeline")
        params = write_params(root / "params.yaml", {**SERVED, "tracking.enabled": True,
                                                     "tracking.uri": uri})
        data = root / "images.pt"
        save_dataset(Dataset("tiny", ("left", "right"), separable(256), separable(32, seed=1),
                             separable(32, seed=2)), data)
        blackbox = {k: root / f"blackbox_{k}.{ext}" for k, ext in
                    (("model", "pt"), ("probs", "pt"), ("metrics", "json"), ("timings", "json"),
                     ("plots", "csv"))}
        train_blackbox.main(["--params", str(params), "--data", str(data),
                             *[a for k, p in blackbox.items() for a in (f"--{k}", str(p))]])
        l2x = run_vibi_stage("l2x", params, data, blackbox, root)
        vibi = run_vibi_stage("vibi", params, data, blackbox, root, init=l2x["model"])
        spec = Architecture("small_cnn", 1, 2, 8, 4)
        save_judge(Judge(spec, chunk=4), root / "judge.pt")
        save_classifier(image_classifier((1, 8, 8), 2, downsample=[2, 4], blocks=[1, 1],
                                         hidden=[4, 4], kernel=[3, 1]),
                        root / "invertible.pt", IMAGE_KIND)
        models = {"blackbox": blackbox["model"], "judge": root / "judge.pt",
                  "vibi": vibi["model"], "l2x": l2x["model"], "invertible": root / "invertible.pt"}
        evaluation = run_evaluate(params, data, models, root / "evaluate")
    return {"root": root, "uri": uri, "params": params, "data": data, "l2x": l2x, "vibi": vibi,
            "blackbox": blackbox["model"], "evaluation": evaluation["metrics"]}


@pytest.fixture(scope="module")
def server(pipeline):
    """`mlflow models serve -m models:/NAME@champion --env-manager local` on 127.0.0.1 at a free
    port, in its own process group (stopped with it), where `import xai` fails (the served model
    needs neither this repository nor params.yaml: tests/shims/sitecustomize.py)."""
    bench = experiment("serving_bench")
    env = {"MLFLOW_TRACKING_URI": pipeline["uri"], "PYTHONPATH": str(ROOT / "tests" / "shims"),
           "XAI_TEST_NO_XAI": "1"}
    proc, url = bench.start_server(f"models:/{NAME}@champion", pipeline["root"] / "server.log",
                                   env=env, timeout_s=180)
    try:
        yield url
    finally:
        bench.stop_server(proc)


def _post(url: str, body: bytes | str, content_type: str = "application/json"
          ) -> tuple[int, dict]:
    """(HTTP status, the JSON answer) of a POST to /invocations."""
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(url + "/invocations", data=data,
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _test_images(n: int = MAX_BATCH) -> torch.Tensor:
    return separable(n, seed=2).x.float() / 255


def _in_process(pipeline) -> xai.VIBI:
    return xai.VIBI.load(pipeline["vibi"]["model"], load_blackbox(pipeline["blackbox"]))


def _served_masks(predictions: list[dict]) -> torch.Tensor:
    return torch.tensor([[[[c == "1" for c in row] for row in channel]
                          for channel in p["mask"]] for p in predictions])


def test_the_stages_log_both_explainers_and_register_vibi_as_champion(pipeline):
    client = MlflowClient(pipeline["uri"])
    for method in ("l2x", "vibi"):
        timings = json.loads(pipeline[method]["timings"].read_text())
        assert timings["model_log_seconds"] > 0
        run = tracking.find_producer(client, pipeline[method]["model"])
        (model,) = client.search_logged_models([run.info.experiment_id],
                                               filter_string=f"source_run_id = '{run.info.run_id}'")
        assert model.name == serving.LOGGED_NAME and model.tags["xai.method"] == method
    (version,) = client.search_model_versions(f"name = '{NAME}'")  # L2X is not registered
    assert version.run_id == tracking.find_producer(client, pipeline["vibi"]["model"]).info.run_id
    assert {k: version.tags[k] for k in serving.COMPARABLE} == {
        "xai.dataset": "tiny", "xai.input_shape": "1x8x8", "xai.k": "1"}
    assert client.get_registered_model(NAME).aliases == {serving.CHAMPION: version.version}
    fidelity = json.loads(pipeline["evaluation"].read_text())["methods"]["vibi"]["fidelity_k1"]
    assert version.tags["xai.fidelity_k1"] == repr(fidelity)
    assert version.tags["xai.promoted_over"] == "none (the first champion)"
    evaluate = tracking.find_runs(load_config(pipeline["params"]).tracking,
                                  "tags.`xai.stage` = 'evaluate'")[0]
    assert version.tags["xai.evaluate_run"] == evaluate.info.run_id
    assert evaluate.data.tags["xai.registered_version"].startswith(f"{NAME} version 1: champion")


@pytest.mark.usefixtures("one_thread")  # as the served model runs (serving.threads = 1)
def test_the_served_answers_are_the_in_process_ones_to_the_bit(pipeline, server):
    x = _test_images()
    status, answer = _post(server, serving.request_body(x))
    assert status == 200, answer
    predictions = answer["predictions"]
    vibi = _in_process(pipeline)
    with torch.inference_mode():
        probs = vibi.blackbox(x).softmax(1)
    assert [p["class"] for p in predictions] == probs.argmax(1).tolist()
    assert [p["label"] for p in predictions] == [("left", "right")[c]
                                                 for c in probs.argmax(1).tolist()]
    assert torch.equal(torch.tensor([p["probabilities"] for p in predictions]).float(), probs)
    assert torch.equal(_served_masks(predictions), vibi.top_k(x))
    p_z = torch.tensor([p["p_z"] for p in predictions]).float().flatten(1)  # N x 1 x 2 x 2
    spread = expand(p_z / chunk_areas((1, 8, 8), 4), (1, 8, 8), 4).contiguous()
    assert torch.equal(spread, vibi.attribute(x))
    with torch.inference_mode():
        logits = vibi.model.chunk_logits(x)
    assert [p["chunks"] for p in predictions] == logits.topk(1).indices.tolist()


BAD_REQUESTS = {
    "wrong shape": (json.dumps({"inputs": np.zeros((2, 1, 8)).tolist()}),
                    "images must be N x 1 x 8 x 8 (or N rows of 64 pixels); got shape 2 x 1 x 8"),
    "wrong channel count": (json.dumps({"inputs": np.zeros((2, 3, 8, 8)).tolist()}),
                            "images of 3 channels: the black box takes 1"),
    "values outside [0, 1]": (json.dumps({"inputs": np.full((2, 1, 8, 8), 2.0).tolist()}),
                              "values must lie in [0, 1]"),
    "NaN": (json.dumps({"inputs": np.full((2, 1, 8, 8), np.nan).tolist()}),
            "128 values are NaN or infinite"),
    "an empty batch": (json.dumps({"inputs": []}), "the batch is empty"),
    "a batch over the limit": (json.dumps({"inputs": np.zeros((MAX_BATCH + 1, 1, 8, 8)).tolist()}),
                               (f"the batch holds {MAX_BATCH + 1} images, over this model's "
                                f"limit of {MAX_BATCH} per request")),
    "a body that is not JSON": ("{'inputs': not json", "Ensure that input is a valid JSON"),
    "not numbers": (json.dumps({"inputs": [[["a"]]]}), "images must be numbers"),
}


def test_each_bad_request_gets_a_400_naming_the_problem_and_the_server_keeps_serving(server):
    good = serving.request_body(_test_images(2))
    for case, (body, says) in BAD_REQUESTS.items():
        status, answer = _post(server, body)
        assert status == 400 and says in answer["message"], (case, status, answer)
        status, answer = _post(server, good)
        assert status == 200 and len(answer["predictions"]) == 2, case


def test_rows_of_pixels_in_a_csv_table_get_the_same_answers(server):
    x = _test_images(4)
    csv = experiment("serving_bench").csv_body(x)
    assert _post(server, csv, "text/csv") == _post(server, serving.request_body(x))


def test_a_bounded_load_ends_without_error_and_the_server_still_answers(server):
    """The benchmark's load test on loopback: 8 concurrent clients x 50 requests of 4 images,
    each answer the one a request alone gets, each within 60 s."""
    body = serving.request_body(_test_images(4))
    with urllib.request.urlopen(urllib.request.Request(
            server + "/invocations", body.encode(), {"Content-Type": "application/json"}),
            timeout=60) as answer:
        expected = answer.read()
    result = experiment("serving_bench").load(server, body, "application/json", 8, 50,
                                              expected=expected)
    assert result["requests"] == 400 and result["errors"] == 0, result["first_errors"]
    assert result["seconds"] < 300
    urllib.request.urlopen(server + "/ping", timeout=10).close()


def test_the_request_helper_writes_the_body_of_prepared_test_images(pipeline, capsys):
    serving.main(["request", "--data", str(pipeline["data"]), "--index", "3", "--count", "2"])
    body = json.loads(capsys.readouterr().out)
    assert torch.equal(torch.tensor(body["inputs"]).float(), _test_images(5)[3:5])
    with pytest.raises(SystemExit):
        serving.main(["request", "--data", str(pipeline["data"]), "--index", "31", "--count", "2"])


@pytest.mark.parametrize("kind", ["trained", "torchscript", "export"])
def test_the_exported_program_gives_the_modules_outputs_to_the_bit(tmp_path, kind):
    """Whatever the black box (a module, or the user's TorchScript or torch.export program),
    the exported explainer answers as `ExplainedPrediction` does, at any batch size."""
    torch.manual_seed(0)
    spec = Architecture("small_cnn", 1, 3, 8, 4)
    blackbox = spec.build().eval()
    vibi = VibiModel(VibiSpec("ResNet_4x", 1, 0.25, 1, 8, 8, 3, 2)).eval()
    x = torch.rand(5, 1, 8, 8)
    if kind == "torchscript":
        blackbox = torch.jit.script(blackbox)
    elif kind == "export":
        blackbox = torch.export.export(blackbox, (x,), dynamic_shapes=(
            {0: torch.export.Dim("batch")},)).module()
    path = tmp_path / f"explainer{'.pt' if kind == 'torchscript' else '.pt2'}"
    export(vibi, blackbox, path)
    program = load_export(path)
    with torch.inference_mode():
        for n in (1, 5):
            expected = ExplainedPrediction(vibi, blackbox)(x[:n])
            for got, want in zip(program(x[:n]), expected, strict=True):
                assert got.dtype == want.dtype and torch.equal(got, want)
    with pytest.raises(ValueError, match=r"name the file \*\.pt"
                       if kind == "torchscript" else r"name the file \*\.pt2"):
        export(vibi, blackbox, tmp_path / "explainer.onnx")


def _version(cfg, output: Path, content: bytes, tags: dict) -> str:
    """A train_vibi run that wrote `output` with `content` and registered it with `tags`."""
    output.write_bytes(content)
    with tracking.stage_run(cfg, "train_vibi", {}) as run:
        run.tag_outputs(output)
        model_id = run.use_client(lambda client, run: client.create_logged_model(
            client.get_run(run.run_id).info.experiment_id, source_run_id=run.run_id).model_id)
        return serving.register(run, NAME, model_id, tags)


def _promote(cfg, output: Path, value: float) -> str:
    with tracking.stage_run(cfg, "evaluate", {}) as run:
        return serving.promote(run, NAME, output, "fidelity_k1", value)


def test_the_champion_moves_to_a_comparable_version_at_least_as_faithful(params, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(params({"tracking.enabled": True, "tracking.uri": uri}))
    client = MlflowClient(uri)
    model = tmp_path / "vibi.pt"
    mnist = {"xai.dataset": "mnist", "xai.input_shape": "1x28x28", "xai.k": 1}

    def champion() -> str:
        return str(client.get_registered_model(NAME).aliases[serving.CHAMPION])

    first = _version(cfg, model, b"first", mnist)
    assert "the first" in _promote(cfg, model, 0.80) and champion() == first
    worse = _version(cfg, model, b"worse", mnist)
    assert "not promoted" in _promote(cfg, model, 0.79) and champion() == first
    assert client.get_model_version(NAME, worse).tags["xai.promotion"].startswith("not promoted")
    equal = _version(cfg, model, b"equal", mnist)
    assert _promote(cfg, model, 0.80).endswith(f">= version {first}'s 0.8000")
    assert champion() == equal
    tags = client.get_model_version(NAME, equal).tags
    assert tags["xai.promoted_over"] == f"version {first} (fidelity_k1 = 0.8000)"
    assert tags["xai.promoted_on"] == "fidelity_k1 = 0.8000"
    other = _version(cfg, model, b"cifar", {**mnist, "xai.dataset": "cifar10",
                                            "xai.input_shape": "3x32x32"})
    decision = _promote(cfg, model, 0.99)
    assert "not compared" in decision and "data set cifar10 vs mnist" in decision
    assert champion() == equal and other != equal
    model.write_bytes(b"equal")  # the champion's file again, evaluated again
    assert "champion already" in _promote(cfg, model, 0.81) and champion() == equal
    model.write_bytes(b"made with tracking off")
    assert "nothing to promote" in _promote(cfg, model, 1.0) and champion() == equal
    off = load_config(params({"tracking.uri": uri}))  # tracking.enabled false: nothing at all
    with tracking.stage_run(off, "evaluate", {}) as run:
        assert serving.promote(run, NAME, model, "fidelity_k1", 1.0) is None
    assert champion() == equal


def test_logging_the_explainer_draws_no_random_number_and_does_nothing_with_tracking_off(
        params, tmp_path, monkeypatch):
    """The stages' metrics stay bit-identical: logging draws from no generator (rebuilding the
    black box would initialise its layers); with tracking off nothing is exported or logged."""
    monkeypatch.chdir(tmp_path)
    spec = Architecture("small_cnn", 1, 2, 8, 4)
    save_blackbox(spec.build(), spec, ("left", "right"), tmp_path / "blackbox.pt")
    vibi = VibiModel(VibiSpec("ResNet_4x", 1, 0.25, 1, 8, 8, 2, 1))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for enabled in (False, True):
        cfg = load_config(params({"tracking.enabled": enabled, "tracking.uri": uri}))
        with tracking.stage_run(cfg, "train_vibi", {}) as run:
            state = torch.get_rng_state()
            logged = serving.log_stage_explainer(
                run, vibi, tmp_path / "blackbox.pt", ("left", "right"), _test_images(1),
                cfg.serving, serving.explainer_tags("tiny", vibi.spec, 0.01, "vibi"),
                registered=True)
            assert torch.equal(torch.get_rng_state(), state)
        if enabled:
            assert logged["model_id"] is not None and logged["version"] == "1"  # (a string)
        else:
            assert logged["model_id"] is None and logged["version"] is None
            assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()


def test_the_serving_pages_blocks_follow_the_benchmarks_record(tmp_path):
    """docs/serving.md's numbers come from experiments/serving_bench.json: a goal missed there
    reads as missed, and the answer shown is the recorded one."""
    from tests.test_readme import _copy_sources
    from tools.docs import BLOCKS

    source = _copy_sources(tmp_path)
    path = source / "experiments" / "serving_bench.json"
    run = json.loads(path.read_text())
    run["served"]["batch_64_json"]["explanations_per_second"] = 987.6
    run["served"]["batch_64_csv"]["explanations_per_second"] = 1234.4
    run["served"]["batch_1_json"]["latency_ms"]["p99"] = 51.25
    run["example"]["answer"]["chunks"] = [5, 6]
    run["example"]["answer"]["mask"] = [["01" * 14] * 28]
    path.write_text(json.dumps(run))
    bench = BLOCKS["serving-bench"](source)
    assert "at batch 64: as JSON not met (988); as CSV rows met (1,234)" in bench
    assert "at batch 1 (JSON): not met (51.2 ms)" in bench
    answer = BLOCKS["serving-answer"](source)
    assert "`chunks` 5 (p = " in answer and "\n" + "01" * 14 + "\n" in answer
