"""The run folder: resolved config, metrics.jsonl, its plot (:mod:`fedft.plots`), the adapter.

``metrics.jsonl`` holds one JSON object per line, each with a ``kind``:

- ``client``: ``round``, ``node``, ``train_loss``, ``examples``, ``steps``, ``bytes_down``,
  ``bytes_up`` (and any other metric the client reported). Bytes are payload: ``bytes_down`` counts
  the tensors and config entries sent to the node (the scenario's JSON goes to a node once, then
  its 16-character digest; a zo node's catch-up history), ``bytes_up`` the reply's update (tensors,
  or the encoded ``fedft.v1`` message); Flower's framing and the reply's metrics are not counted;
- ``round``: ``round``, ``clients``, ``train_loss``, ``eval_loss``, ``perplexity``,
  ``token_accuracy``, ``bytes_down``, ``bytes_up`` (sums over the round's clients), ``wall_s``,
  ``eval_s``; on instruction data ``accuracy`` (teacher-forced exact match) and, in generation
  rounds, ``exact_match``, ``rouge_l``, ``gen_examples``, ``gen_s`` of the global model's greedy
  answers (:mod:`fedft.evaluation`); ``local_eval_loss``, ``local_token_accuracy``,
  ``local_exact_match``, ``local_rouge_l``: the clients' own figures on their own eval splits
  after local training (personalisation), averaged over the round's clients weighted by their
  training examples (loss, token accuracy) or by the answers they scored (exact match, ROUGE-L);
  with ``[privacy]``, ``privacy.epsilon`` (spent so far, at ``privacy.target_delta``) and
  ``privacy.noise_multiplier`` (:mod:`server.privacy`).

With ``eval.tensorboard`` every round's numbers also go, as scalars named ``round/<key>``, into
TensorBoard event files in ``<run_dir>/tensorboard`` (``tensorboardX``: ``fedft[tensorboard]``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import tomli_w

log = logging.getLogger("fedft")


class RunRecorder:
    """Appends metrics to ``<run_dir>/metrics.jsonl`` as rounds complete (a crash loses nothing)."""

    def __init__(
        self,
        run_dir: Path,
        resolved_config: dict[str, Any],
        num_rounds: int,
        resume: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.num_rounds = num_rounds
        self.metrics_path = run_dir / "metrics.jsonl"
        self._board: Any = None
        if resolved_config.get("eval", {}).get("tensorboard"):
            self._board = tensorboard_writer(run_dir / "tensorboard")
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.toml").write_text(tomli_w.dumps(resolved_config), encoding="utf-8")
            self.metrics_path.write_text("", encoding="utf-8")
        self._round_clients: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()

    def truncate_after(self, last_round: int) -> None:
        """Drop rows of rounds after ``last_round`` (an interrupted round is run again)."""
        keep = [r for r in read_metrics(self.metrics_path) if r["round"] <= last_round]
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.metrics_path)

    def _append(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def client(self, server_round: int, node: int, metrics: dict[str, float]) -> None:
        """Record one accepted client reply."""
        row = {"kind": "client", "round": server_round, "node": node, **metrics}
        self._round_clients.append(row)
        self._append(row)

    def round(self, server_round: int, metrics: dict[str, float]) -> dict[str, Any]:
        """Record the round's global metrics (round 0 is the model before training)."""
        now = time.perf_counter()
        clients = self._round_clients
        row: dict[str, Any] = {
            "kind": "round",
            "round": server_round,
            "clients": len(clients),
            "bytes_down": sum(c.get("bytes_down", 0) for c in clients),
            "bytes_up": sum(c.get("bytes_up", 0) for c in clients),
            "wall_s": now - self._t0,
            **metrics,
        }
        if clients:
            weights = [c.get("examples", 1) for c in clients]
            losses = [c.get("train_loss", 0.0) for c in clients]
            row["train_loss"] = sum(w * x for w, x in zip(weights, losses, strict=True)) / sum(
                weights
            )
            row["steps"] = sum(c.get("steps", 0) for c in clients) / len(clients)
            row |= _local_means(clients)
        self._append(row)
        if self._board is not None:
            for key, value in row.items():
                if key not in ("kind", "round") and isinstance(value, int | float):
                    self._board.add_scalar(f"round/{key}", value, server_round)
            self._board.flush()
        self._round_clients, self._t0 = [], now
        log.info(_progress_line(row, self.num_rounds))
        return row

    def finish(self) -> Path:
        """Write the plot; return the run folder."""
        from fedft.plots import plot_metrics  # matplotlib only when a run ends

        rows = read_metrics(self.metrics_path)
        plot_metrics(rows, self.run_dir / "config.toml", self.run_dir / "metrics.png")
        if self._board is not None:
            self._board.close()
        return self.run_dir


LOCAL_KEYS = ("local_eval_loss", "local_token_accuracy", "local_exact_match", "local_rouge_l")
"""Client metrics on their own eval splits that the round row averages over clients."""


def _local_means(clients: list[dict[str, Any]]) -> dict[str, float]:
    """Per :data:`LOCAL_KEYS` entry, the mean over the clients that report it.

    Weighted by each client's scored examples (``local_gen_examples`` for generation metrics),
    else by its training examples.
    """
    out = {}
    for key in LOCAL_KEYS:
        rows = [c for c in clients if key in c]
        if not rows:
            continue
        generated = key in ("local_exact_match", "local_rouge_l")
        weights = [
            c.get("local_gen_examples", 1) if generated else c.get("examples", 1) for c in rows
        ]
        out[key] = sum(w * c[key] for w, c in zip(weights, rows, strict=True)) / max(
            sum(weights), 1
        )
    return out


def tensorboard_writer(folder: Path) -> Any:
    """A ``tensorboardX.SummaryWriter`` writing event files into ``folder``.

    Raises
    ------
    ConfigError
        ``eval.tensorboard`` is set but ``tensorboardX`` is not installed.
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        from fedft.errors import ConfigError

        raise ConfigError(
            "eval.tensorboard", "needs tensorboardX: pip install 'fedft[tensorboard]'"
        ) from None
    return SummaryWriter(logdir=str(folder))


def _progress_line(row: dict[str, Any], num_rounds: int) -> str:
    parts = [f"round {row['round']}/{num_rounds}"]
    if row["round"] > 0:
        parts.append(f"{row['clients']} clients")
        if "steps" in row:
            parts.append(f"{row['steps']:.0f} local steps each")
        if "train_loss" in row:
            parts.append(f"train loss {row['train_loss']:.3f}")
    parts.append(f"eval loss {row.get('eval_loss', float('nan')):.3f}")
    if "rouge_l" in row:
        parts.append(f"EM {row['exact_match']:.2f} ROUGE-L {row['rouge_l']:.3f}")
    elif "accuracy" in row:
        parts.append(f"acc {row['accuracy']:.2f}")
    else:  # plain text: next-token accuracy
        if "token_accuracy" in row:
            parts.append(f"tok acc {row['token_accuracy']:.3f}")
    if "local_rouge_l" in row:
        parts.append(f"local ROUGE-L {row['local_rouge_l']:.3f}")
    if "privacy.epsilon" in row:
        parts.append(f"epsilon {row['privacy.epsilon']:.2f}")
    if row["round"] > 0:
        parts.append(f"up {row['bytes_up'] / 1e3:.1f} kB")
        parts.append(f"{row['wall_s']:.1f} s")
    return " | ".join(parts)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse ``metrics.jsonl``."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
