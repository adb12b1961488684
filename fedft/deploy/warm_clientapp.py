"""A long-lived ClientApp process: one interpreter serves every message a SuperNode receives.

Flower 1.39's SuperNode in its default ``--isolation subprocess`` mode starts a SuperExec that
launches a fresh ``flwr-clientapp`` process per message: a new interpreter that imports torch,
transformers and peft and rebuilds the model every round. With ``--isolation process`` the
SuperNode starts nothing and waits for an outside process to claim its tasks over its Runtime
API. Flower's own ``flwr-clientapp`` cannot be that process: it takes one task's ``--token``, runs
it and exits. This module is: it polls the Runtime API as Flower's SuperExec does
(``AcquireTask``), and runs each claimed task *in this process* with Flower's own steps
(``flwr.supernode.runtime.run_clientapp``: pull the message, context, run and FAB; install the
FAB; load the ClientApp; call it; push the reply and the context; heartbeats meanwhile), but does
not exit after it. Flower loads the ClientApp module once (it stays in ``sys.modules``), so
everything the app caches per process (:mod:`clients.warm`: the model, the tokenized data, the
edge bundle and its sessions) is there for the next round. The per-node ``Context`` (the zo and
Ferret sync state) stays where Flower keeps it, in the SuperNode, and is pushed back after every
task as Flower does: a process that dies loses only what it caches, which the next task
rebuilds.

A task of another FAB (the server submitted different app code) runs in Flower's own one-shot
``flwr-clientapp`` and this process then exits with :data:`NEW_APP_EXIT`, so that the next
process imports the new code: ``fedft client`` (:mod:`fedft.deploy.device`) starts it again.

Usage: ``python -m fedft.deploy.warm_clientapp --runtime-api-address 127.0.0.1:9094
[--preload torch]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from fedft.deploy.warm_process import NEW_APP_EXIT
from fedft.deploy.warm_task import StaleTask, newer_task_pending, pull_task_input

WARM_ENV = "FEDFT_WARM_PROCESS"  # as fedft.edge.ort_train.WARM_ENV (not imported: no onnx here)

log = logging.getLogger("fedft")
POLL_S = 0.2  # Flower's SuperExec polls every 1 s; a round waits for this at most once
# what a device imports before its first task (ImportError ignored: a torch-free device)
PRELOAD = {"torch": ("torch", "transformers", "peft"), "ort": ("onnxruntime", "numpy")}


def _client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))  # type: ignore[arg-type]
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the SuperNode's Runtime API on loopback: plain HTTP, as Flower's
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def serve_task(
    address: str, token: str, installed: set[str], stale: Callable[[], bool] = lambda: False
) -> str:
    """Run one claimed task in this process, as ``flwr-clientapp --token`` would; its FAB hash.

    ``installed``: the FAB hashes already installed by this process (the FAB is installed once).
    The reply (or Flower's error reply if the app raised) and the context are pushed back, and
    one line says how long the task took, from claimed to pushed. A task whose message the
    SuperNode gave up on (``stale()``: :mod:`fedft.deploy.warm_task`) ends as failed, with no
    reply and no context: its run is over.
    """
    started = time.perf_counter()
    client = _client(address, "flwr-clientapp", token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message: Message | None = None
    reply: Message | None = None
    context: Context | None = None
    fab_hash, app_s = "", 0.0
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client, stale)
        fab_hash = fab.hash_str
        if fab_hash not in installed:
            install_from_fab(fab.content, skip_prompt=True)
            installed.add(fab_hash)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        client_app = load(run.fab_id, run.fab_version, fab_hash)  # imported once: sys.modules
        called = time.perf_counter()
        reply = client_app(message=message, context=context)
        app_s = time.perf_counter() - called
        sub_status, details = SubStatus.COMPLETED, ""
    except StaleTask as err:
        context, details = None, f"the SuperNode gave up on this task's message: {err}"
        print(f"fedft: ClientApp process {os.getpid()} dropped a task: {details}", flush=True)
        return fab_hash  # finally: its status pushed (failed), nothing else
    except Exception as err:  # as Flower's run_clientapp: the server gets an error reply
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = f"{type(err)}:<'{err}'>"
        if isinstance(err, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            reason = "An exception was raised when attempting to load `ClientApp`"
        log.error("ClientApp raised an exception", exc_info=err)
        details = reason
        if message is not None:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, sub_status, details)  # the context: zo sync state
        finally:
            heartbeat.stop()
            client.close()
    kind = message.metadata.message_type if message is not None else "a"
    took = time.perf_counter() - started
    print(
        f"fedft: ClientApp process {os.getpid()} served {kind} message in {took:.2f} s "
        f"(ClientApp {app_s:.2f} s)",
        flush=True,
    )
    return fab_hash


def _one_shot(address: str, token: str) -> int:
    """Flower's own ``flwr-clientapp`` for one task (another FAB than this process loaded)."""
    cmd = [str(Path(sys.executable).with_name("flwr-clientapp"))]
    cmd += ["--runtime-api-address", address, "--token", token, "--insecure"]
    return subprocess.call(cmd)


def preload(backend: str) -> None:
    """Import what the backend's ClientApp will import, before the first task arrives."""
    for name in PRELOAD.get(backend, PRELOAD["torch"]):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # a task in flight still pushes its (failed) status


def serve(address: str, backend: str = "torch", poll_s: float = POLL_S) -> int:
    """Claim and run the SuperNode's ClientApp tasks until stopped; the exit code."""
    signal.signal(signal.SIGTERM, _stop)
    os.environ[WARM_ENV] = "1"  # the ORT runtime builds each next round's sessions ahead
    preload(backend)
    acquirer = _client(address, "SuperExec")
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    checker = _client(address, "SuperExec")  # asks whether a task's message was given up on
    loaded: str | None = None  # the FAB whose modules this process imported
    installed: set[str] = set()
    print(f"fedft: ClientApp process {os.getpid()} ready", flush=True)
    try:
        while True:
            res = acquirer.AcquireTask(request)
            if not (res.HasField("task") and res.token):
                time.sleep(poll_s)
                continue
            if loaded is not None and res.task.fab_hash and res.task.fab_hash != loaded:
                _one_shot(address, res.token)
                return NEW_APP_EXIT
            stale = newer_task_pending(checker)  # per task: no answer carried over
            loaded = serve_task(address, res.token, installed, stale) or loaded
    finally:
        acquirer.close()
        checker.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedft.deploy.warm_clientapp``: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, metavar="HOST:PORT")
    parser.add_argument("--backend", default="torch", help="what to import before the first task")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # not httpx's every poll
    try:
        return serve(args.runtime_api_address, args.backend)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
