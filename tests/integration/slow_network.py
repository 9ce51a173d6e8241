"""A small network whose construction takes a few seconds on a real device: a job that is
reliably caught mid-run (the scale-out test SIGKILLs its worker then).

Declared by the integration stack (``procs.env_for``) as ``slow_network:build``. On the meta
device (the registration probe measures it there) it builds at once."""

import time

import torch
from torch import nn

DELAY_S = 4.0


def build(in_features=4, num_classes=3, hidden=(16,), **config):
    if torch.empty(0).device.type != "meta":
        time.sleep(DELAY_S)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], num_classes))
