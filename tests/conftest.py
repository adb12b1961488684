"""Shared test setup: one torch thread (the machines are small and shared; 2 threads contend)."""

import os

os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")

import torch

torch.set_num_threads(1)
