"""A simulation attached to a Ray cluster that was already running (``simulation.ray_address``).

The test starts a Ray head on loopback (``ray start --head --block``, 2 CPUs, its own temp folder,
in a process group of its own), runs a short real ``fedft simulate`` attached to it, then asks
the head's GCS (a fresh driver connected to it) which actors ran there: the run's
``ClientAppActor``s must be among them, on the head's node, under the run's job. The head's
process group is killed afterwards (never ``ray stop``: it stops every Ray on the machine).
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.sims import command

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))

ACTORS = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
actors = ray._private.state.state.actor_table(None)
jobs = ray._private.state.state.job_table()
print(json.dumps({
    "head": ray.get_runtime_context().get_node_id(),
    "actors": [
        {"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "job": a["JobID"]}
        for a in actors.values()
    ],
    "jobs": [{"job": j["JobID"], "pid": j["DriverPid"]} for j in jobs],
}))
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """``HOST:PORT`` of a Ray head started for this test, stopped (process group killed) after."""
    port = free_port()
    temp = Path(f"/tmp/rayh-{os.getpid()}")  # short: Ray's socket paths must fit 107 bytes
    args = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
    args += ["--num-cpus=2", "--num-gpus=0", "--include-dashboard=false"]
    args += ["--disable-usage-stats", f"--temp-dir={temp}", "--object-store-memory=200000000"]
    log = (tmp_path / "ray-head.log").open("w")
    head = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(1)
        else:
            pytest.fail("the Ray head did not listen within 180 s")
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # anything of the group still alive
        log.close()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_simulation_runs_on_an_existing_ray_cluster(ray_head, tmp_path):
    out = tmp_path / "run"
    overrides = [
        "partition.method='iid'",
        "federation.num_clients=2",
        "federation.num_rounds=1",
        "train.local_steps=2",
        "data.global_eval_size=16",
        f"simulation.ray_address='{ray_head}'",
    ]
    proc = subprocess.Popen(
        [*command(overrides), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["round"] for r in rows if r["kind"] == "client") == [1, 1]

    seen = subprocess.run(
        [sys.executable, "-c", ACTORS, ray_head], capture_output=True, text=True, timeout=300
    )
    assert seen.returncode == 0, seen.stderr[-3000:]
    cluster = json.loads(seen.stdout.strip().splitlines()[-1])
    run_jobs = {j["job"] for j in cluster["jobs"] if j["pid"] == proc.pid}
    assert len(run_jobs) == 1, cluster["jobs"]  # the simulation was a driver of this cluster
    actors = [a for a in cluster["actors"] if a["class"] == "ClientAppActor"]
    assert actors, cluster["actors"]
    # the head has 2 CPUs and a client takes 1: Flower placed 2 actors, both on the head's node
    assert all(a["node"] == cluster["head"] and a["job"] in run_jobs for a in actors), actors
    assert len(actors) == 2
