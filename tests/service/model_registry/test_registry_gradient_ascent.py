"""Registration refuses what ``gradient_ascent`` cannot serve (issue 13): multi-class labels, a
network with biases or a trainable output layer, an optimiser other than plain gradient descent,
uploaded weights. Each is a 422 problem that says why, and nothing is written."""

from __future__ import annotations

import pytest
from registry_support import nothing_written, refused

SPEC = {"name": "ga", "architecture": "linear", "input_shape": [6], "num_classes": 2, "method": "gradient_ascent"}


def _register(client, **over):
    return client.post("/v1/models", json={**SPEC, **over}, headers=client.auth("admin"))


@pytest.mark.parametrize("over,kind,words", [
    ({"num_classes": 3}, "method-not-applicable", ["binary labels", "num_classes must be 2, got 3"]),
    ({"architecture": "mlp"}, "method-not-applicable", ["fixed output layer", "linear, two_layer_relu", "'mlp'"]),
    ({"architecture": "cnn", "input_shape": [1, 4, 4]}, "method-not-applicable", ["'cnn'"]),
    ({"architecture_config": {"bias": True}}, "architecture-invalid", ["bias"]),
    ({"architecture": "two_layer_relu", "architecture_config": {"hidden": 4, "train_output": True}}, "architecture-invalid",
     ["train_output"]),
    ({"family": "mixed_linear"}, "validation-error", ["does not serve family 'mixed_linear'"]),
    ({"method_config": {"optimizer": "adam"}}, "validation-error", ["optimizer"]),
    ({"method_config": {"momentum": 0.9}}, "validation-error", ["momentum changes the iterates"]),
    ({"method_config": {"weight_decay": 1e-4}}, "validation-error", ["weight decay"]),
    ({"method_config": {"batch_size": 32}}, "validation-error", ["full-batch"]),
    ({"method_config": {"checkpoint": "s3://bucket/weights.safetensors"}}, "validation-error", ["carry no dual coefficients"]),
    ({"checkpoint": "s3://bucket/weights.safetensors"}, "validation-error", ["checkpoint"]),
    ({"method_config": {"epochs": 5000}}, "limit-exceeded", ["epochs", "LETHE_LIMITS__MAX_EPOCHS"]),
])
def test_refused_with_the_reason_and_nothing_written(client, db, over, kind, words):
    refused(_register(client, **over), kind, *words)
    nothing_written(db, client)


@pytest.mark.parametrize("architecture,config", [("linear", {}), ("two_layer_relu", {"hidden": 8})])
def test_homogeneous_binary_models_are_accepted(client, db, architecture, config):
    r = _register(client, architecture=architecture, architecture_config=config, method_config={"epochs": 100, "lr": 0.5})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["method"] == "gradient_ascent" and body["family"] == "standard"
    assert body["method_config"]["optimizer"] == "gd" and body["method_config"]["epochs"] == 100
    # mixed_linear keeps serving every architecture it did
    assert _register(client, name="ml", architecture="mlp", method="mixed_linear", num_classes=3).status_code == 201
