"""A "network" whose construction kills the process building it: a job that always crashes.

Declared by the integration stack (``procs.env_for``) as ``crashing_network:build``. On the meta
device (the registration probe measures it there) it builds a small network instead."""

import os

import torch
from torch import nn


def build(in_features=4, num_classes=3, **config):
    if torch.empty(0).device.type != "meta":
        os._exit(137)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
