"""Two processes on the CPU with gloo (torch.distributed.run): identical weights, each instance once per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import make_pregenerated, read_metrics, run_two_gloo_processes

from bert_domain_ft.data.epoch_format import read_manifest

WORKER = Path(__file__).with_name("training_ddp_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_fixture", "probe_weight"),
    [
        ("tiny_bert_dir", "bert.encoder.layer.0.output.dense.weight"),  # MLM + NSP
        ("roberta_encoder_dir", "roberta.encoder.layer.0.output.dense.weight"),  # MLM only, fresh head warmed up
    ],
    ids=["bert", "roberta"],
)
def test_two_gloo_processes_end_identical_and_share_each_epoch_exactly(
    tmp_path: Path, tiny_corpus: Path, model_fixture: str, probe_weight: str, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    data = make_pregenerated(tiny_corpus, model_dir, tmp_path / "data", epochs=1, max_seq_len=32)
    reports = tmp_path / "reports"
    reports.mkdir()
    run_two_gloo_processes(WORKER, data, model_dir, tmp_path / "out", reports)

    first, second = (load_file(str(reports / f"weights-rank{rank}.safetensors")) for rank in (0, 1))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    trained = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(trained[probe_weight], first[probe_weight])

    num_instances = read_manifest(data)["epochs"][0]["num_instances"]
    seen = [json.loads((reports / f"indices-rank{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in ("0", "1"):  # the one data epoch is read twice, reshuffled
        assert sorted(seen[0][epoch] + seen[1][epoch]) == list(range(num_instances))
        assert len(seen[0][epoch]) == pytest.approx(len(seen[1][epoch]), abs=1)
    assert seen[0]["0"] != seen[0]["1"]

    records = [record for record in read_metrics(tmp_path / "out") if record["kind"] == "train"]
    steps = [record["step"] for record in records]
    assert len(steps) == len(set(steps))  # one writer: rank 0
    assert not list(tmp_path.glob("out/*.partial"))


def test_one_process_launched_by_torchrun_joins_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --nproc_per_node 1 trains through DDP as several processes would (NCCL on a GPU, gloo here)."""
    import socket

    import torch.distributed as dist

    from bert_domain_ft.training.distributed import cleanup, init_distributed

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    context = init_distributed(no_cuda=True)
    try:
        assert context.is_distributed and dist.is_initialized() and dist.get_backend() == "gloo"
    finally:
        cleanup(context)
    assert not dist.is_initialized()
    monkeypatch.delenv("MASTER_ADDR")  # a WORLD_SIZE alone (set by some clusters' shells) is no launch
    assert not init_distributed(no_cuda=True).is_distributed
