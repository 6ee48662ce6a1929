"""The benchmark runs end to end and reports sane figures."""

from __future__ import annotations

import json

import torch

from xai.pipeline import bench


def test_bench_writes_every_case(params, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--params", str(params({"device": "cpu"})), "--seconds", "0.05", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["ceiling_gflops"]["fp32"] > 0
    names = [c["name"] for c in report["cases"]]
    assert any("blackbox train step" in n for n in names)
    assert any("vibi train step" in n for n in names)
    for case in report["cases"]:
        assert case["images_per_second"] > 0 and case["mflop_per_image"] > 0
        assert 0 < case["share_of_ceiling"]


def test_matmul_ceiling_counts_flops():
    assert bench.matmul_ceiling(torch.device("cpu"), torch.float32, 0.05) > 0.1
