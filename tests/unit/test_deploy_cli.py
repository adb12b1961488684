"""`fedft server` and `fedft client` refuse bad input in one line, before Flower starts."""

import socket
import subprocess
import sys

import pytest

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


def one_line_error(proc):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedft: error: "), proc.stderr
    return lines[0]


def test_server_needs_certificates_unless_insecure(tmp_path):
    line = one_line_error(fedft("server", cwd=tmp_path))
    assert "`--certs`" in line and "fedft certs" in line and "--insecure" in line


def test_server_refuses_a_file_that_is_not_public_keys(tmp_path, certs):
    (tmp_path / "keys.pub").write_text("not a key\n")
    proc = fedft("server", "--certs", str(certs), "--auth-keys", "keys.pub", cwd=tmp_path)
    assert "`--auth-keys`: keys.pub line 1" in one_line_error(proc)
    private = certs / "supernode-0.key"  # a private key is not a public one either
    proc = fedft("server", "--certs", str(certs), "--auth-keys", str(private), cwd=tmp_path)
    assert "`--auth-keys`" in one_line_error(proc)


def test_server_names_a_port_already_in_use(tmp_path, certs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["server", "--certs", str(certs), "--address", "127.0.0.1", "--port", str(port)]
        line = one_line_error(fedft(*args, "--state", str(tmp_path / "state"), cwd=tmp_path))
    assert f"`--port`: cannot use 127.0.0.1:{port}" in line


def test_server_checks_the_scenario_first(tmp_path):
    proc = fedft("server", "--insecure", "--set", "federation.num_rounds=0", cwd=tmp_path)
    assert "`federation.num_rounds`" in one_line_error(proc)


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
