"""fl.simulation: sampling, evaluation schedule, exact ledger, robustness, bit-identical resume."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import sparsecodec as sc
from fl.algorithms.base import ClientResult
from fl.algorithms.ec import EC
from fl.algorithms.fedavg import FedAvg
from fl.channel import Channel
from fl.checkpoint import load_checkpoint
from fl.config import resolve_config
from fl.simulation import (CHECKPOINT, LEDGER, METRICS, MODEL, SUMMARY, Simulation, load_model_bytes,
                           run_simulation)
from sparsecodec.errors import ConfigError

# A 3-class logistic regression on 240 synthetic samples: milliseconds per round, but with
# minibatches (shuffled by the per-client generators), partial participation and residuals.
TINY = ["dataset=synthetic-logistic", "data.n_train=240", "data.n_test=60", "data.dim=12",
        "data.num_classes=3", "model=logistic-regression", "model_options.in_features=12",
        "model_options.num_classes=3", "model_options.init=torch_default", "rounds=5",
        "sim.clients=6", "sim.clients_per_round=3", "sim.eval_every=2", "sim.checkpoint_every=1",
        "algo.lr=0.2", "algo.momentum=0.5", "algo.batch_size=8",
        "algo.ec.density=0.2", "algo.ef21.density=0.2"]


def tiny(algorithm="ec", *extra):
    return resolve_config(algorithm=algorithm, sets=TINY + list(extra))


@pytest.mark.parametrize("algorithm", ["fedavg", "ec", "ef21"])
def test_resume_is_bit_identical(tmp_path, algorithm):
    config = tiny(algorithm)
    full = run_simulation(config, tmp_path / "full")
    run_simulation(config, tmp_path / "cut", stop_after=2)            # "crash" after round 2
    assert len((tmp_path / "cut" / METRICS).read_text().splitlines()) == 2
    with open(tmp_path / "cut" / METRICS, "a") as f:                  # a line written after the
        f.write('{"round": 3, "stale": true}\n')                     # checkpoint is discarded
    resumed = run_simulation(config, tmp_path / "cut", resume=True)
    for name in (MODEL, METRICS, LEDGER):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    assert resumed.metrics == full.metrics and len(full.metrics) == 5
    assert all(np.array_equal(full.params[k], resumed.params[k]) for k in full.params)
    assert resumed.ledger.rows() == full.ledger.rows()


def test_resume_checks_the_config_and_can_extend_the_run(tmp_path):
    run_simulation(tiny("ec", "rounds=3"), tmp_path / "a")
    with pytest.raises(ConfigError, match="algo.lr"):
        run_simulation(tiny("ec", "rounds=3", "algo.lr=0.3"), tmp_path / "a", resume=True)
    with pytest.raises(ConfigError, match="checkpoint.ckpt"):
        run_simulation(tiny("ec"), tmp_path / "nothing-here", resume=True)
    extended = run_simulation(tiny("ec", "rounds=5"), tmp_path / "a", resume=True)
    straight = run_simulation(tiny("ec", "rounds=5"), tmp_path / "b")
    # round 3 was the last round of the first run, so it was evaluated there; otherwise the same
    assert [m["round"] for m in extended.metrics] == [1, 2, 3, 4, 5]
    assert all(np.array_equal(extended.params[k], straight.params[k]) for k in straight.params)
    assert extended.ledger.rows() == straight.ledger.rows()


def test_checkpoint_holds_every_random_state(tmp_path):
    run_simulation(tiny("ec"), tmp_path, stop_after=2)
    state = load_checkpoint(tmp_path / CHECKPOINT)       # data, not a pickle (issue 16)
    assert (tmp_path / CHECKPOINT).read_bytes()[:6] == b"FLCKPT"
    assert state["rounds_done"] == 2 and len(state["client_generators"]) == 6
    assert state["sample_rng"]["bit_generator"] == "PCG64"
    residuals = [s.feedback.state_dict()["residuals"] for s in state["client_states"].values()]
    assert sum(bool(r) for r in residuals) >= 3        # clients that took part keep a residual
    assert len(state["ledger"]) == 2 * 3 * 2           # 2 rounds x 3 clients x (down + up)
    assert state["downlink"]["version"] == 2 and len(state["replicas"]) >= 3   # the patch downlink


def test_sampling_is_m_of_n_seeded_and_eval_follows_the_schedule():
    result = run_simulation(tiny("fedavg", "rounds=5"))
    rounds = [m["clients"] for m in result.metrics]
    assert all(len(c) == 3 == len(set(c)) and c == sorted(c) and max(c) < 6 for c in rounds)
    assert len({tuple(c) for c in rounds}) > 1
    assert rounds == [m["clients"] for m in run_simulation(tiny("fedavg", "rounds=5")).metrics]
    assert rounds != [m["clients"] for m in run_simulation(tiny("fedavg", "rounds=5", "seed=1")).metrics]
    evaluated = [m["round"] for m in result.metrics if m["accuracy"] is not None]
    assert evaluated == [2, 4, 5]                      # every 2 rounds, and the last one
    assert torch.get_num_threads() == 1


def test_ec_at_density_1e3_sends_real_topk_frames_and_the_ledger_is_exact(tmp_path):
    """Acceptance: EC on the demo MLP at density 1e-3 (demo setting): real TopK frames,
    ledger bits == sum of 8 * len(bytes) of every message delivered."""
    sent = []
    channel = Channel(tap=lambda msg, client: sent.append(msg))
    config = resolve_config(algorithm="ec", setting="demo",
                            sets=["rounds=1", "sim.clients_per_round=2", "algo.ec.density=1e-3"])
    result = run_simulation(config, tmp_path, channel=channel)
    assert config.algo.density == 1e-3 and config.model == "fedpm-mlp"
    ups = [m for m in sent if m.direction == "up"]
    assert len(ups) == 2 and len(sent) == 4
    assert result.ledger.total_bits() == sum(8 * len(m.data) for m in sent)
    assert result.summary["uplink_bits"] == sum(8 * len(m.data) for m in ups)
    codec = sc.TopK(density=1e-3, k_rule="flare")
    for msg in ups:
        assert msg.spec is not None          # sim.wire = "compact": the receiver holds the spec
        decoded = sc.decode_packed(msg.data, msg.spec)
        for name, x in decoded.items():     # FLARE rule: round(size * 1e-3) + 1 per tensor
            assert np.count_nonzero(x) == codec.k_for(x.size), name
            assert msg.tensor_sections[name]["index"] > 0 or x.size == 1
        assert 0 < msg.nbits < 0.01 * 32 * sum(x.size for x in decoded.values())
    summary = json.loads((tmp_path / SUMMARY).read_text())
    assert summary["uplink_bpp"] == summary["uplink_bits"] / (2 * result.summary["num_params"])
    assert np.array_equal(load_model_bytes((tmp_path / MODEL).read_bytes())["fc1.weight"],
                          result.params["fc1.weight"])


class Flaky(EC):
    """EC whose client 1 raises in round 2 after touching its residual, whose client 2
    smuggles a NaN past its own checks (a codec that allows non-finite values), and whose
    client 4 sends a wrongly shaped update in round 2."""

    seen: list

    def client_update(self, state, global_params, data, cfg, channel):
        if data.client_id == 1 and channel.round == 2:
            super().client_update(state, global_params, data, cfg, channel)   # mutates residual
            raise RuntimeError("disk full")
        if data.client_id == 2:
            bad = {k: np.full_like(v, np.nan) for k, v in global_params.items()}
            msg = channel.send(bad, sc.Dense(allow_nonfinite=True))
            return ClientResult(state, msg, data.num_samples)
        if data.client_id == 4 and channel.round == 2:    # a tensor of the wrong shape
            msg = channel.send({k: np.zeros(3, np.float32) for k in global_params}, sc.Dense())
            return ClientResult(state, msg, data.num_samples)
        return super().client_update(state, global_params, data, cfg, channel)

    def server_update(self, state, updates, cfg):
        self.seen.append([u.client for u in updates])
        return super().server_update(state, updates, cfg)


def test_failing_and_nonfinite_clients_are_dropped_with_a_logged_reason(caplog):
    algo = Flaky()
    algo.seen = []
    # self-describing bundles: the server's own checks must catch what a compact spec would
    # refuse at the sender (another codec, another shape)
    config = tiny("ec", "sim.clients_per_round=0", "rounds=2", "sim.wire='bundle'")
    sim = Simulation(config, algorithm=algo)
    sim.run(stop_after=1)
    residual_before = {k: v.copy() for k, v in sim.client_states[1].feedback.state_dict()["residuals"].items()}
    with caplog.at_level(logging.WARNING, logger="fl.simulation"):
        result = sim.run()
    assert algo.seen == [[0, 1, 3, 4, 5], [0, 3, 5]]
    reasons = {d["client"]: d["reason"] for d in result.metrics[-1]["dropped"]}
    assert set(reasons) == {1, 2, 4}
    assert "RuntimeError: disk full" in reasons[1] and "non-finite" in reasons[2]
    assert "shape (3,), expected (3, 12)" in reasons[4]
    assert any("client 1 dropped" in r.getMessage() and "disk full" in r.getMessage() for r in caplog.records)
    assert any("client 2 dropped" in r.getMessage() for r in caplog.records)
    assert all(np.isfinite(v).all() for v in result.params.values())
    after = sim.client_states[1].feedback.state_dict()["residuals"]   # untouched by the failure
    assert residual_before and all(np.array_equal(residual_before[k], after[k]) for k in residual_before)
    assert result.metrics[-1]["updates"] == 3 and result.summary["dropped_updates"] == 4


def test_diverging_client_is_dropped_and_all_dropped_keeps_the_model(caplog):
    sim = Simulation(tiny("fedavg", "sim.clients_per_round=0", "rounds=1"))
    sim.clients[3].x[0, 0] = float("nan")        # its training turns NaN
    with caplog.at_level(logging.WARNING, logger="fl.simulation"):
        result = sim.run()
    assert [d["client"] for d in result.metrics[0]["dropped"]] == [3]
    assert "NonFiniteUpdateError" in result.metrics[0]["dropped"][0]["reason"]
    assert all(np.isfinite(v).all() for v in result.params.values())

    class Broken(FedAvg):
        def client_update(self, *args):
            raise ValueError("no data")

    sim = Simulation(tiny("fedavg", "rounds=1"), algorithm=Broken())
    before = {k: v.copy() for k, v in sim.params.items()}
    with caplog.at_level(logging.WARNING, logger="fl.simulation"):
        result = sim.run()
    assert result.metrics[0]["updates"] == 0 and result.ledger.total_bits(direction="up") == 0
    assert all(np.array_equal(before[k], result.params[k]) for k in before)
    assert any("every sampled client was dropped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind, extra, sizes", [
    ("iid", [], [40] * 6),
    ("contiguous", ["partition.shard_size=30"], [30] * 6),
    ("dirichlet", ["partition.alpha=0.5"], [40] * 6),
    ("writers", ["sim.clients=0", "sim.clients_per_round=4"], [24] * 10),   # 10 synthetic groups
])
def test_partition_kinds_reach_the_clients(kind, extra, sizes):
    sim = Simulation(tiny("fedavg", f"partition.kind={kind}", *extra))
    assert [c.num_samples for c in sim.clients] == sizes
    if kind == "contiguous":
        assert np.array_equal(sim.clients[1].x.numpy(), sim.dataset.x_train[30:60])
    sim.step()


def test_no_global_random_state_is_used():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    run_simulation(tiny("ec", "rounds=2"))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


def test_outputs_on_disk(tmp_path):
    result = run_simulation(tiny("ef21", "rounds=3"), tmp_path)
    lines = [json.loads(x) for x in (tmp_path / METRICS).read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2, 3] and lines == result.metrics
    assert lines[-1]["cum_uplink_bits"] == result.ledger.total_bits(direction="up")
    summary = json.loads((tmp_path / SUMMARY).read_text())
    for key in ("algorithm", "dataset", "model", "rounds", "final_accuracy", "uplink_bits",
                "downlink_bits", "uplink_bpp", "config"):
        assert key in summary, key
    assert summary["config"]["algo"]["density"] == 0.2 and summary["rounds"] == 3
    assert summary["uplink_bits"] == sum(json.loads(x)["nbits"] for x in (tmp_path / LEDGER).read_text().splitlines()
                                         if json.loads(x)["direction"] == "up")


def test_any_exception_while_receiving_drops_the_client_unless_sim_strict():
    """Issue 16: whatever a client's bytes make the server raise, that client is dropped and
    the round goes on; ``sim.strict`` (developers) re-raises what the checks did not foresee."""

    class Boom(FedAvg):
        def check_update(self, state, tensors, cfg):
            raise MemoryError("decoded update too big")

    result = run_simulation(tiny("fedavg", "rounds=1"), algorithm=Boom())
    assert result.metrics[0]["updates"] == 0
    assert all("MemoryError" in d["reason"] for d in result.metrics[0]["dropped"])
    with pytest.raises(MemoryError):
        run_simulation(tiny("fedavg", "rounds=1", "sim.strict=true"), algorithm=Boom())


# -- the torch device (sim.device, --device) -------------------------------------------------
#: the algorithms whose own tensors follow the model's device (Algorithm.devices lists cuda)
ON_GPU = ["ec", "ef21", "fedavg", "fedavg-topk", "flare", "sparsyfed", "topk-prune"]
NO_GPU = "needs a CUDA GPU (torch.cuda.is_available() is False here); run on a machine with one"


def test_which_algorithms_run_on_a_gpu():
    from fl.algorithms import available_algorithms, get_algorithm

    assert [n for n in available_algorithms() if "cuda" in get_algorithm(n).devices] == ON_GPU
    assert all("cpu" in get_algorithm(n).devices for n in available_algorithms())


@pytest.mark.parametrize("bad", ["tpu", "CPU", "cuda:", "cuda:x", "gpu", 0, True])
def test_device_names_are_checked_when_the_config_is_built(bad):
    with pytest.raises(ConfigError, match=r"sim.device must be 'cpu', 'cuda' or 'cuda:N' \(python -m fl "
                                          r"run --device cpu\|cuda\)"):
        tiny("fedavg", f"sim.device={json.dumps(bad)}")


def test_the_device_is_checked_against_the_machine_when_the_run_starts(monkeypatch):
    assert tiny("fedavg").sim.device == "cpu"                      # the default
    config = tiny("fedavg", "sim.device='cuda:1'")                 # a valid name: built anywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU on this machine .* run with --device cpu"):
        Simulation(config)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"1 CUDA device\(s\): use cuda:0 .. cuda:0"):
        Simulation(config)
    # an algorithm whose tensors do not follow the model yet is refused on the GPU, not run
    # with every client dropped for a device mismatch
    with pytest.raises(ConfigError, match="algorithm 'fedpm' runs on cpu only .* use --device cpu"):
        Simulation(resolve_config(algorithm="fedpm", sets=["sim.device='cuda'"]))


@pytest.mark.parametrize("algorithm", ON_GPU)
def test_on_the_cpu_the_codecs_get_numpy_and_the_tensors_stay_put(algorithm, monkeypatch):
    """The send boundary: whatever the device, only CPU numpy arrays reach a codec."""
    from fl.channel import Link

    sent: list[type] = []
    real_send = Link.send

    def send(self, tensors, *args, **kwargs):
        sent.extend(type(t) for t in tensors.values())
        return real_send(self, tensors, *args, **kwargs)

    monkeypatch.setattr(Link, "send", send)
    sim = Simulation(tiny(algorithm, "rounds=2", "sim.clients_per_round=0", "sim.device='cpu'"))
    assert sim.device == torch.device("cpu")
    assert all(c.x.device.type == c.y.device.type == "cpu" for c in sim.clients)
    result = sim.run()
    assert sent and set(sent) == {np.ndarray}
    assert sum(len(m["dropped"]) for m in result.metrics) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
@pytest.mark.parametrize("algorithm", ON_GPU)
def test_a_run_on_the_gpu_matches_the_cpu_run(algorithm):
    """On cuda the model and the data live on the GPU, nothing is dropped for a device
    mismatch, the codecs get CPU numpy, and the result is the CPU's up to float rounding."""
    extra = ["rounds=2", "sim.clients_per_round=0", "sim.wire='bundle'", "sim.downlink='dense'"]
    gpu = Simulation(tiny(algorithm, *extra, "sim.device='cuda'"))
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    assert all(c.x.is_cuda and c.y.is_cuda for c in gpu.clients) and gpu.x_test.is_cuda
    on_gpu, on_cpu = gpu.run(), run_simulation(tiny(algorithm, *extra))
    assert sum(len(m["dropped"]) for m in on_gpu.metrics) == 0
    assert all(np.isfinite(m["train_loss"]) for m in on_gpu.metrics)
    for k, v in on_cpu.params.items():
        np.testing.assert_allclose(on_gpu.params[k], v, rtol=1e-3, atol=1e-4, err_msg=k)
    if algorithm == "fedavg":     # dense fp32 deltas: the same shapes, so the same bits
        assert on_gpu.ledger.total_bits(direction="up") == on_cpu.ledger.total_bits(direction="up")


def test_a_checkpoint_from_before_sim_device_resumes_on_the_cpu(tmp_path):
    config = tiny("ec", "rounds=2")
    sim = Simulation(config)
    sim.step()
    state = sim.state_dict()
    del state["config"]["sim"]["device"]               # as every checkpoint written before it
    later = Simulation(config)
    later.load_state_dict(state)
    assert later.rounds_done == 1
    state["config"]["sim"]["device"] = "cuda"          # a recorded device is compared as any key
    with pytest.raises(ConfigError, match="sim.device: checkpoint 'cuda' vs now 'cpu'"):
        Simulation(config).load_state_dict(state)
