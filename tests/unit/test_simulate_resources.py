"""Ray client resources of a simulation: a share of the GPUs when there are any, else the CPU."""

import pytest
import torch

import fedft.simulate as simulate_mod
from fedft.config import load_scenario
from fedft.errors import ConfigError


def fake_cuda(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def resources(monkeypatch, cpus, overrides=()):
    monkeypatch.setattr(simulate_mod.os, "cpu_count", lambda: cpus)
    scenario = load_scenario(None, list(overrides))
    return simulate_mod.backend_config(scenario, simulate_mod.cuda_device_count())


def test_auto_shares_one_gpu_among_the_clients_that_run_at_once(monkeypatch):
    fake_cuda(monkeypatch, 1)
    cfg = resources(monkeypatch, cpus=4, overrides=["federation.num_clients=5"])
    assert cfg["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.25}


def test_auto_gives_at_most_one_gpu_a_client(monkeypatch):
    fake_cuda(monkeypatch, 4)
    cfg = resources(monkeypatch, cpus=2, overrides=["federation.num_clients=1"])
    assert cfg["client_resources"]["num_gpus"] == 1.0


def test_auto_without_cuda_is_cpu_only(monkeypatch):
    fake_cuda(monkeypatch, 0)
    assert resources(monkeypatch, cpus=2)["client_resources"]["num_gpus"] == 0.0


def test_a_set_fraction_is_used_and_falls_back_to_the_cpu(monkeypatch):
    fake_cuda(monkeypatch, 2)
    cfg = resources(monkeypatch, cpus=8, overrides=["simulation.gpus_per_client=0.125"])
    assert cfg["client_resources"]["num_gpus"] == 0.125
    fake_cuda(monkeypatch, 0)
    cfg = resources(monkeypatch, cpus=8, overrides=["simulation.gpus_per_client=0.125"])
    assert cfg["client_resources"]["num_gpus"] == 0.0


@pytest.mark.parametrize("value", ["1.5", "-0.1", "'half'"])
def test_bad_values_name_the_key(value):
    with pytest.raises(ConfigError, match="simulation.gpus_per_client"):
        load_scenario(None, [f"simulation.gpus_per_client={value}"])


def test_simulate_passes_the_gpu_share_to_flower(monkeypatch, tmp_path):
    import flwr.simulation

    # Imported before CUDA is faked: bitsandbytes probes it on import.
    from clients.app import app as client_app
    from server.app import make_server_app

    fake_cuda(monkeypatch, 1)
    monkeypatch.setattr(simulate_mod.os, "cpu_count", lambda: 2)
    seen = {}

    def fake_run_simulation(**kwargs):
        seen.update(kwargs)
        (tmp_path / "adapter").mkdir()

    monkeypatch.setattr(flwr.simulation, "run_simulation", fake_run_simulation)
    simulate_mod.simulate(load_scenario(None), tmp_path, make_server_app, client_app)
    assert seen["backend_config"]["client_resources"]["num_gpus"] == 0.5


def test_ray_gets_no_more_cpus_than_the_clients_use(monkeypatch):
    fake_cuda(monkeypatch, 0)
    one = resources(monkeypatch, cpus=2, overrides=["federation.num_clients=1"])
    # Flower's Ray backend makes floor(CPUs / cpus_per_client) workers: one client, one worker.
    assert one["init_args"]["num_cpus"] / one["client_resources"]["num_cpus"] == 1
    five = resources(monkeypatch, cpus=2, overrides=["federation.num_clients=5"])
    assert five["init_args"]["num_cpus"] == 2


def crashed_runtime(cause):
    """What flwr.simulation.run_simulation raises when its backend (Ray) cannot start."""
    try:
        try:
            try:
                raise cause
            except Exception as ex:
                raise RuntimeError("Simulation Runtime crashed.") from ex
        except Exception as ex:
            raise RuntimeError("An error was encountered. Ending simulation.") from ex
    except RuntimeError as err:
        return err


def test_a_dead_simulation_backend_is_named_and_its_cause_is_one_line():
    err = crashed_runtime(
        TimeoutError("Timed out waiting for file\n /tmp/ray/x/metrics_agent_port")
    )
    assert simulate_mod.backend_failure(err) == (
        "TimeoutError: Timed out waiting for file /tmp/ray/x/metrics_agent_port"
    )
    assert simulate_mod.backend_failure(RuntimeError("An error was encountered.")) is None
    assert simulate_mod.backend_failure(ValueError("a bug in the server")) is None


def test_simulate_stops_the_waiting_server_when_the_backend_dies(monkeypatch, tmp_path):
    import logging
    import threading

    import flwr.simulation

    from fedft.errors import SimulationBackendError

    seen = {}

    def make_server_app(scenario, run_dir, stop, done):
        # the server thread as run_federation has it: waiting for replies until `stop` is set
        def serve():
            seen["stopped"] = stop.wait(60)
            done.set()

        seen["thread"] = threading.Thread(target=serve)
        return "server app"

    def dead_backend(**kwargs):
        seen["thread"].start()
        logging.getLogger("flwr").error("An exception occured!! %s", "GCS overloaded")
        raise crashed_runtime(ConnectionError("GCS overloaded"))

    monkeypatch.setattr(flwr.simulation, "run_simulation", dead_backend)
    with pytest.raises(SimulationBackendError, match="Ray.*ConnectionError: GCS overloaded"):
        simulate_mod.simulate(load_scenario(None), tmp_path, make_server_app, "client app")
    seen["thread"].join(5)
    assert seen["stopped"] is True and not seen["thread"].is_alive()


def test_another_error_from_flower_keeps_its_type_and_the_server_stops(monkeypatch, tmp_path):
    import threading

    import flwr.simulation

    stop_seen = threading.Event()

    def make_server_app(scenario, run_dir, stop, done):
        threading.Thread(target=lambda: (stop.wait(60) and stop_seen.set(), done.set())).start()
        return "server app"

    def broken(**kwargs):
        raise ValueError("not the runtime")

    monkeypatch.setattr(flwr.simulation, "run_simulation", broken)
    with pytest.raises(ValueError, match="not the runtime"):
        simulate_mod.simulate(load_scenario(None), tmp_path, make_server_app, "client app")
    assert stop_seen.wait(5)


def test_a_ray_address_attaches_instead_of_sizing_a_local_ray(monkeypatch):
    fake_cuda(monkeypatch, 0)
    local = resources(monkeypatch, cpus=2)["init_args"]
    assert local["num_cpus"] == 2 and "address" not in local
    attached = resources(monkeypatch, cpus=2, overrides=["simulation.ray_address='10.0.0.5:6379'"])
    # ray.init refuses a CPU count when it connects: the cluster's nodes bring their own
    assert attached["init_args"]["address"] == "10.0.0.5:6379"
    assert "num_cpus" not in attached["init_args"]
    assert attached["client_resources"]["num_cpus"] == 1.0


def test_a_ray_address_with_spaces_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="simulation.ray_address"):
        load_scenario(None, ["simulation.ray_address='host 6379'"])
