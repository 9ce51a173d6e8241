"""The method registry: what ``register`` refuses, and the runner's interface over every entry."""

from __future__ import annotations

import sys
from typing import Literal

import pytest
import torch

from workers.unlearning import ConfigError, ModelSpec, TensorSource, get_method, list_methods, load_model_from_bytes, register, unregister
from workers.unlearning.methods import MethodConfig, config_classes
from workers.unlearning.methods.base import REQUIRED
from workers.unlearning.methods.mixed_linear.config import MixedLinearConfig
from workers.unlearning.methods.mixed_linear.method import MixedLinear


class _Cfg(MixedLinearConfig):
    method: Literal["reg_probe"] = "reg_probe"


class _Probe(MixedLinear):
    name = "reg_probe"
    guarantee = "heuristic"
    config_cls = _Cfg
    private_artifacts = ("weights",)


def _variant(**attrs):
    return type("Variant", (_Probe,), attrs)()


@pytest.mark.parametrize("attrs,needle", [
    ({"name": "Bad-Name"}, "lower_snake"),
    ({"name": ""}, "lower_snake"),
    ({"guarantee": "probably"}, "guarantee"),
    ({"families": frozenset()}, "families"),
    ({"families": frozenset({"transformer"})}, "families"),
    ({"kinds": frozenset({"people"})}, "kinds"),
    ({"config_cls": MixedLinearConfig}, "says method='mixed_linear'"),
    ({"config_cls": dict}, "MethodConfig"),
    ({"private_artifacts": ()}, "private_artifacts"),
    ({"private_artifacts": ("weights", "weights")}, "private_artifacts"),
    ({"release": None}, "missing operations"),
    ({"zero": None}, "missing operations"),  # the family has zero (supports says so) but no operation
    ({"private_artifacts": ("Weights",)}, "private_artifacts"),
    ({"private_artifacts": ["weights"]}, "private_artifacts"),
])
def test_register_refuses_an_invalid_entry(attrs, needle):
    with pytest.raises(ConfigError, match=needle):
        register(_variant(**attrs))
    assert "reg_probe" not in list_methods() and "reg_probe" not in config_classes()


@pytest.mark.parametrize("absent", ["name", "guarantee", "families", "kinds", "config_cls", "private_artifacts", "train", "supports", None])
def test_register_refuses_an_entry_missing_an_attribute_with_a_config_error(absent):
    attrs = {k: getattr(_Probe, k) for k in ("name", "guarantee", "families", "kinds", "config_cls", "private_artifacts")}
    attrs.update({op: getattr(_Probe, op) for op in REQUIRED})
    if absent is not None:
        del attrs[absent]
    # with nothing else absent, ``zero``/``retrain`` are: ``supports`` says the family has them
    with pytest.raises(ConfigError):
        register(type("Bare", (), attrs)())
    assert "reg_probe" not in list_methods()


def test_register_accepts_every_family_and_kind_at_once():
    from workers.unlearning.methods import FAMILIES, KINDS

    class Every(_Cfg):
        families = frozenset(FAMILIES)
        kinds = frozenset(KINDS)

    register(_variant(families=frozenset(FAMILIES), kinds=frozenset(KINDS), config_cls=Every))
    unregister("reg_probe")


@pytest.mark.parametrize("attr", ["families", "kinds"])
def test_register_refuses_a_method_whose_families_or_kinds_differ_from_its_config(attr):
    """The service checks a model's family and a request's kind against the config's declaration
    (torch-free); a method that serves something else would be reached by requests it cannot serve."""
    from workers.unlearning.methods import FAMILIES, KINDS

    with pytest.raises(ConfigError, match=f"{attr} .* differ from its config"):
        register(_variant(**{attr: frozenset(FAMILIES if attr == "families" else KINDS)}))
    assert "reg_probe" not in list_methods()


def test_unregister_of_an_unknown_name_is_a_no_op():
    unregister("never_registered")
    assert "never_registered" not in list_methods()


def test_register_refuses_a_config_that_allows_unknown_keys():
    class Loose(MethodConfig):
        model_config = {"extra": "allow"}
        method: Literal["reg_probe"] = "reg_probe"

    with pytest.raises(ConfigError, match="forbid unknown keys"):
        register(_variant(config_cls=Loose))


def test_register_then_unregister_a_method_and_its_config():
    probe = register(_Probe())
    try:
        assert get_method("reg_probe") is probe and config_classes()["reg_probe"] is _Cfg
        with pytest.raises(ConfigError, match="already registered"):
            register(_Probe())
        with pytest.raises(ConfigError, match="already registered"):
            register(type("Again", (MixedLinear,), {})(), replace=True)  # a built-in is never replaced
    finally:
        unregister("reg_probe")
    assert "reg_probe" not in list_methods() and "reg_probe" not in config_classes()
    with pytest.raises(ConfigError, match="unknown forgetting method"):
        get_method("reg_probe")
    with pytest.raises(ConfigError, match="built in"):
        unregister("mixed_linear")


# small runs per family, and per method where a method has settings of its own
SMALL = {"mixed_linear": {"core_epochs": 2}, "linear_head": {"core_epochs": 2}, "standard": {"epochs": 3},
         "lcodec": {"perturbations": 8}, "gradient_ascent": {"epochs": 20}}


def _spec(method) -> tuple[ModelSpec, int]:
    """A 3-class mlp, or a binary scalar-output network for a method that serves only those."""
    if not method.config_cls.model_problems("mlp", 3):
        return ModelSpec("mlp", {"in_features": 5, "hidden": [6], "num_classes": 3}, "last:1"), 3
    arch = method.config_cls.architectures[0]
    assert not method.config_cls.model_problems(arch, 2)
    return ModelSpec(arch, {"in_features": 5}), 2


@pytest.mark.parametrize("name", list_methods())
def test_runner_interface_round_trip(name):
    """What the job runner calls, generically: build, prepare, train, forget, bound, release,
    serve, and the private artifacts back into an equal model."""
    method = get_method(name)
    assert all(callable(getattr(method, op)) for op in REQUIRED)
    assert method.config_cls is config_classes()[name]
    family = sorted(method.families)[0]
    small = {k: v for k, v in {**SMALL[family], **SMALL.get(name, {})}.items() if k in method.config_cls.model_fields}
    cfg = method.config_cls.model_validate({"device": "cpu", "chunk_size": 8, **small})
    spec, classes = _spec(method)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, classes, (40,), generator=g)
    model = method.build(spec, cfg)
    # a standard network trains on its user split only (no core)
    method.prepare(model, TensorSource(x[:0], y[:0]) if family == "standard" else TensorSource(x[:10], y[:10]), cfg)
    user = TensorSource(x[10:], y[10:], chunk_size=8, ids=torch.arange(10, 40))
    method.train(model, user, cfg)
    if "samples" in method.kinds:  # some of the samples go
        result = method.forget(model, user.subset(torch.arange(5, 30)), cfg, removed=user.subset(torch.arange(5)))
    else:  # a whole class goes, with its samples
        gone = user.y == 2
        result = method.forget(model, user.subset(torch.nonzero(~gone).reshape(-1)), cfg,
                               removed=user.subset(torch.nonzero(gone).reshape(-1)))
    bound = method.bound(result, cfg)
    assert bound.guarantee in ("exact", "certified", "heuristic")
    blobs = method.save_private(model)
    assert method.private_artifacts[0] in blobs and set(blobs) <= set(method.private_artifacts)
    back = method.load_private(blobs, cfg)
    ev = TensorSource(x, y)
    assert method.evaluate(back, ev, cfg) == method.evaluate(model, ev, cfg)
    served = method.serve_bytes(model, method.release(model, cfg), {"model": "m"})
    assert isinstance(served, bytes) and served not in blobs.values()  # the served file is not a private one
    outputs = 1 if spec.architecture in ("linear", "two_layer_relu") else 3  # scalar-output networks
    assert load_model_from_bytes(served)(x).shape == (40, outputs)  # load_model builds every family's file


def test_importing_the_configs_does_not_import_torch():
    import subprocess

    code = ("import sys; from workers.unlearning.methods import config_classes; "
            "import workers.unlearning; c = config_classes(); print(sorted(c), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['certified_removal', 'gradient_ascent', 'lcodec', 'mixed_linear', 'svd_projection'] False"
