"""`fedft server` and `fedft client` refuse bad input in one line, before Flower starts."""

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from fedft.deploy.certs import make_certs
from fedft.deploy.processes import node_config_arg, superlink_command, supernode_command


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    make_certs(folder, ["localhost"], ["127.0.0.1"], supernodes=1)
    return folder


def fedft(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "fedft.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedft: error: "), proc.stderr
    return lines[0]


@pytest.mark.integration
def test_server_needs_certificates_unless_insecure(tmp_path):
    line = one_line_error(fedft("server", cwd=tmp_path))
    assert "`--certs`" in line and "fedft certs" in line and "--insecure" in line


@pytest.mark.integration
def test_server_refuses_a_file_that_is_not_public_keys(tmp_path, certs):
    (tmp_path / "keys.pub").write_text("not a key\n")
    proc = fedft("server", "--certs", str(certs), "--auth-keys", "keys.pub", cwd=tmp_path)
    assert "`--auth-keys`: keys.pub line 1" in one_line_error(proc)
    private = certs / "supernode-0.key"  # a private key is not a public one either
    proc = fedft("server", "--certs", str(certs), "--auth-keys", str(private), cwd=tmp_path)
    assert "`--auth-keys`" in one_line_error(proc)


@pytest.mark.integration
def test_server_names_a_port_already_in_use(tmp_path, certs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["server", "--certs", str(certs), "--address", "127.0.0.1", "--port", str(port)]
        line = one_line_error(fedft(*args, "--state", str(tmp_path / "state"), cwd=tmp_path))
    assert f"`--port`: cannot use 127.0.0.1:{port}" in line


@pytest.mark.integration
def test_server_checks_the_scenario_first(tmp_path):
    proc = fedft("server", "--insecure", "--set", "federation.num_rounds=0", cwd=tmp_path)
    assert "`federation.num_rounds`" in one_line_error(proc)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--partition-id", "3"], "`--partition-id`"),
        (["--partition-id", "0", "--data", "missing.jsonl"], "`--data`"),
        (["--partition-id", "0", "--auth-key", "ca.pem"], "`--auth-key`"),
    ],
)
def test_client_names_the_bad_option(tmp_path, certs, extra, named):
    args = ["client", "--server", "127.0.0.1:1", "--certs", str(certs), "--num-partitions", "2"]
    if "--auth-key" in extra:
        extra = [*extra[:-1], str(certs / extra[-1])]
    assert named in one_line_error(fedft(*args, *extra, cwd=tmp_path))


@pytest.mark.integration
def test_client_needs_the_ca_unless_insecure(tmp_path):
    args = ["client", "--server", "127.0.0.1:1", "--partition-id", "0", "--num-partitions", "2"]
    assert "`--certs`: no CA certificate at certs/ca.pem" in one_line_error(
        fedft(*args, cwd=tmp_path)
    )


def test_flower_command_lines_use_grpc_and_tls(tmp_path, certs):
    from fedft.deploy.processes import ServerTls

    tls = ServerTls(certs / "ca.pem", certs / "server.pem", certs / "server.key")
    link = superlink_command("0.0.0.0:9092", 9093, tmp_path / "db", tls, supernode_auth=True)
    assert link[link.index("--fleet-api-type") + 1] == "grpc-rere"
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert link[link.index("--ssl-certfile") + 1] == str(certs / "server.pem")
    plain = superlink_command("127.0.0.1:9092", 9093, tmp_path / "db", None)
    assert "--insecure" in plain and "--ssl-certfile" not in plain
    node = supernode_command("h:9092", certs / "ca.pem", {"partition-id": 0, "backend": "zo"})
    assert "--grpc-rere" in node and "--insecure" not in node
    assert node[node.index("--node-config") + 1] == 'partition-id=0 backend="zo"'
    assert "--insecure" in supernode_command("h:9092", None, {"partition-id": 1})
    assert node_config_arg({"data-path": "/a b/c.jsonl"}) == 'data-path="/a b/c.jsonl"'


# The documented server settings (docs/deploy.md, section 2), run from a clone's folder
DOC_SETTINGS = [
    "federation.num_clients=3",
    "partition.method='iid'",
    "federation.min_train_clients=2",
    "federation.round_timeout_s=600",
]


def server_options(**changes):
    from fedft.deploy.aggregator import APP_DIR, ServerOptions

    opts = {
        "scenario": APP_DIR / "simulations" / "default.toml",
        "overrides": tuple(DOC_SETTINGS),
        "certs": Path("certs"),
        "insecure": True,
        "address": "127.0.0.1",
        "port": 9092,
        "control_port": 9093,
        "auth_keys": None,
        "resume": None,
        "state": None,
        "app": APP_DIR,
    }
    return ServerOptions(**{**opts, **changes})


def serverapp_scenario(opts):
    """The scenario the ServerApp builds from the run config `fedft server` submits."""
    from fedft.deploy.aggregator import resolve_scenario
    from server.app import scenario_from_run_config

    path, overrides, _ = resolve_scenario(opts)
    return scenario_from_run_config({"scenario": str(path), "set": shlex.join(overrides)})


def first_run_folder(folder):
    """The run folder a first `fedft server` leaves: the ServerApp records the scenario it got."""
    from fedft.run_folder import stored_config

    scenario = serverapp_scenario(server_options())
    run_dir = Path(scenario.run.output_dir) / "default-20261123-201822"
    assert run_dir.is_relative_to(folder.resolve())  # relative output_dir, made absolute
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps(stored_config(scenario)))
    return run_dir.relative_to(folder.resolve())


def test_the_documented_resume_command_passes_the_serverapps_check(tmp_path, monkeypatch):
    from server.federation import check_same_scenario

    monkeypatch.chdir(tmp_path)
    run_dir = first_run_folder(tmp_path)
    # "the same command plus --resume and the run folder it printed" (docs/deploy.md, section 5)
    for printed in (run_dir, run_dir.resolve()):
        resumed = serverapp_scenario(server_options(resume=printed))
        check_same_scenario(resumed, Path(resumed.run.resume_dir))  # what the ServerApp does
        assert Path(resumed.run.resume_dir) == run_dir.resolve()
    # without --scenario, the run folder's own config.toml is the scenario
    resumed = serverapp_scenario(server_options(scenario=None, overrides=(), resume=run_dir))
    check_same_scenario(resumed, Path(resumed.run.resume_dir))


@pytest.mark.integration
def test_server_refuses_a_changed_scenario_on_resume_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = first_run_folder(tmp_path)
    scenario = str(server_options().scenario)
    args = ["server", "--insecure", "--scenario", scenario, "--resume", str(run_dir)]
    args += ["--port", str(free_port()), "--control-port", str(free_port())]
    for setting in [*DOC_SETTINGS, "federation.num_rounds=7"]:
        args += ["--set", setting]
    line = one_line_error(fedft(*args, cwd=tmp_path))
    assert line.startswith("fedft: error: `run.resume_dir`: ") and "federation.num_rounds" in line
    assert not (tmp_path / "runs" / "superlink").exists()  # refused before anything started


@pytest.mark.integration
def test_client_names_a_runtime_port_already_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["client", "--insecure", "--server", "127.0.0.1:1", "--partition-id", "0"]
        proc = fedft(*args, "--num-partitions", "1", "--runtime-port", str(port), cwd=tmp_path)
    assert "Traceback" not in proc.stderr
    assert f"`--runtime-port`: cannot use 127.0.0.1:{port}" in one_line_error(proc)


def test_server_resumes_a_run_folder_that_fedft_simulate_started(tmp_path, monkeypatch):
    """`fedft simulate` records a relative run.output_dir; the same folder is not a change."""
    from fedft.config import load_scenario
    from fedft.run_folder import stored_config
    from server.federation import check_same_scenario

    monkeypatch.chdir(tmp_path)
    opts = server_options()
    simulated = load_scenario(opts.scenario, list(opts.overrides))
    assert simulated.run.output_dir == "runs"
    run_dir = Path("runs") / "default-20261123-120000"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(tomli_w.dumps(stored_config(simulated)))
    for scenario in (opts.scenario, None):
        resumed = serverapp_scenario(server_options(scenario=scenario, resume=run_dir))
        check_same_scenario(resumed, Path(resumed.run.resume_dir))


def test_a_missing_flower_executable_is_one_error_naming_it():
    from fedft.deploy.processes import ProcessError, start

    with pytest.raises(ProcessError, match="cannot start /nonexistent/flower-superlink"):
        start(["/nonexistent/flower-superlink"], {})
