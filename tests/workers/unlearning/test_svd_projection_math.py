"""svd_projection's projector math against a direct float64 numpy computation (DESIGN §14.3).

The oracle takes the SVD of the representation matrix R itself (numpy), where the method works
from the Gram matrix R·Rᵀ accumulated by forward hooks; conv patches are checked against a
direct loop over output positions and against the convolution itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from workers.unlearning.methods.svd_projection.projection import (
    conv_patches,
    layer_grams,
    project,
    recompute_batchnorm,
    scaled_energies,
    soft_projector,
    update_matrix,
)


def _oracle_projector(r: np.ndarray, alpha: float) -> np.ndarray:
    """R is d × n (columns are representations): U diag(λ) Uᵀ from numpy's SVD of R."""
    u, s, _ = np.linalg.svd(r, full_matrices=False)
    energy = s**2 / np.sum(s**2)
    lam = alpha * energy / ((alpha - 1) * energy + 1)
    return (u * lam) @ u.T


def _gram(r: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(r @ r.T)


@pytest.mark.parametrize("d,n,alpha", [(6, 20, 3.0), (12, 5, 100.0), (9, 9, 0.5), (16, 40, 1.0)])
def test_soft_projector_matches_numpy_svd(d, n, alpha):
    rng = np.random.default_rng(d * 100 + n)
    r = rng.normal(size=(d, n)) * rng.uniform(0.1, 3.0, size=(d, 1))  # unequal energies
    got = soft_projector(_gram(r), alpha).numpy()
    np.testing.assert_allclose(got, _oracle_projector(r, alpha), atol=1e-10)


def test_update_matrix_matches_numpy():
    rng = np.random.default_rng(7)
    d = 10
    r_retain, r_forget = rng.normal(size=(d, 30)), rng.normal(size=(d, 4)) + 2.0
    w = rng.normal(size=(5, d))
    m_r, m_f = _oracle_projector(r_retain, 100.0), _oracle_projector(r_forget, 3.0)
    want = w @ (np.eye(d) - m_f + m_r @ m_f)
    p = update_matrix(_gram(r_retain), _gram(r_forget), 100.0, 3.0).numpy()
    np.testing.assert_allclose(w @ p, want, atol=1e-10)


def test_alpha_one_is_energy_weighting():
    e = torch.tensor([5.0, 3.0, 1.5, 0.5], dtype=torch.float64)
    np.testing.assert_allclose(scaled_energies(e, 1.0).numpy(), (e / e.sum()).numpy(), rtol=1e-15)


def test_large_alpha_is_the_hard_projector_onto_the_span():
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(8, 3))  # a rank-3 set of representations in R^8
    r = basis @ rng.normal(size=(3, 25))
    q, _ = np.linalg.qr(basis)
    hard = q @ q.T
    m = soft_projector(_gram(r), 1e12).numpy()
    np.testing.assert_allclose(m, hard, atol=1e-8)
    # and the soft projector at a moderate α is strictly between: it shrinks the span, never grows it
    m3 = soft_projector(_gram(r), 3.0).numpy()
    eig = np.linalg.eigvalsh(m3)
    assert eig.max() < 1 - 1e-3 and eig.min() > -1e-10
    np.testing.assert_allclose(m3 @ hard, m3, atol=1e-10)


def test_a_direction_used_by_both_is_kept_and_one_used_only_by_the_forget_set_is_removed():
    # retain uses e0,e1; forget uses e1,e2: the hard limits remove e2 only
    r_retain = np.zeros((4, 6))
    r_retain[0] = np.arange(1, 7)
    r_retain[1] = np.arange(6, 0, -1)
    r_forget = np.zeros((4, 6))
    r_forget[1] = 1.0
    r_forget[2] = np.linspace(1, 2, 6)
    p = update_matrix(_gram(r_retain), _gram(r_forget), 1e12, 1e12).numpy()
    np.testing.assert_allclose(p @ np.eye(4)[:, 2], 0.0, atol=1e-8)  # forget-only direction is gone
    for keep in (0, 1, 3):
        np.testing.assert_allclose(p @ np.eye(4)[:, keep], np.eye(4)[:, keep], atol=1e-8)


def _direct_patches(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A loop over output positions, cropping the padded input at the layer's stride/dilation."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    n, _, h, w = xp.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                crop = xp[b, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
                rows.append(crop.reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("kernel,stride,padding,dilation,hw", [
    (3, 1, 1, 1, (5, 9)), ((3, 2), (2, 1), (1, 0), 1, (7, 4)), (3, 2, 2, 2, (11, 6)), (2, 3, 0, 1, (4, 13)),
])
def test_conv_patches_of_non_square_inputs_match_a_direct_loop(kernel, stride, padding, dilation, hw):
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=False).double()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    got = conv_patches(layer, x)
    torch.testing.assert_close(got, _direct_patches(layer, x), rtol=0, atol=0)
    # W_flat @ patch is the convolution's output at that position
    out = layer(x)
    want = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    torch.testing.assert_close(got @ layer.weight.reshape(4, -1).T, want, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch pads a copy itself: the case under test
def test_conv_patches_for_same_padding_and_reflect_mode_match_the_convolution():
    torch.manual_seed(1)
    for layer in (nn.Conv2d(2, 3, (3, 4), padding="same", bias=False), nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=False)):
        layer = layer.double()
        x = torch.randn(2, 2, 6, 5, dtype=torch.float64)
        out = layer(x)
        got = conv_patches(layer, x) @ layer.weight.reshape(3, -1).T
        torch.testing.assert_close(got, out.permute(0, 2, 3, 1).reshape(-1, 3), rtol=1e-12, atol=1e-12)


def test_layer_grams_and_project_on_a_conv_net_match_the_oracle():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=(1, 2))
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 4, 4)).double()
    xr, xf = torch.randn(6, 2, 5, 7, dtype=torch.float64), torch.randn(3, 2, 5, 7, dtype=torch.float64) + 1.0
    device = torch.device("cpu")
    kw = dict(max_patches=10**6, device=device)  # every patch: the oracle sees them all
    retain = layer_grams(net, [xr[:4], xr[4:]], n_samples=6, **kw)
    forget = layer_grams(net, [xf], n_samples=3, **kw)
    w_conv, w_lin = conv.weight.detach().numpy().reshape(3, -1).copy(), net[3].weight.detach().numpy().copy()
    b_conv = conv.bias.detach().clone()
    r_conv = [_direct_patches(conv, x).numpy().T for x in (xr, xf)]
    r_lin = [net[:3](x).detach().numpy().T for x in (xr, xf)]
    project(net, retain, forget, 100.0, 3.0)
    for w, (rr, rf), got in ((w_conv, r_conv, conv.weight), (w_lin, r_lin, net[3].weight)):
        want = w @ (np.eye(w.shape[1]) - _oracle_projector(rf, 3.0) + _oracle_projector(rr, 100.0) @ _oracle_projector(rf, 3.0))
        np.testing.assert_allclose(got.detach().numpy().reshape(want.shape), want, atol=1e-9)
    assert torch.equal(conv.bias, b_conv)  # biases unchanged


def test_patch_sampling_caps_the_rows_per_layer():
    conv = nn.Conv2d(1, 2, 3, padding=1)
    net = nn.Sequential(conv, nn.Flatten(), nn.Linear(2 * 10 * 12, 3))
    x = torch.randn(40, 1, 10, 12)
    grams = layer_grams(net, [x[i : i + 8] for i in range(0, 40, 8)], n_samples=40, max_patches=500, device=torch.device("cpu"))
    assert 400 <= grams.rows["0"] <= 500 < 40 * 120  # capped, spread over the batches
    assert grams.rows["2"] == 40


def test_batchnorm_statistics_are_recomputed_on_the_given_sample():
    bn = nn.BatchNorm1d(3)
    net = nn.Sequential(nn.Linear(4, 3), bn).eval()
    bn.running_mean.fill_(7.0)
    bn.running_var.fill_(9.0)
    x = torch.randn(50, 4)
    recompute_batchnorm(net, [x[:20], x[20:]], torch.device("cpu"))
    h = net[0](x).detach().to(torch.float64)
    # the batches weigh by their sizes: the mean is the sample's; the variance the size-weighted
    # mean of the batches' unbiased variances
    torch.testing.assert_close(bn.running_mean.double(), h.mean(0), rtol=1e-5, atol=1e-6)
    want_var = (20 * h[:20].var(0) + 30 * h[20:].var(0)) / 50
    torch.testing.assert_close(bn.running_var.double(), want_var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not net.training and not bn.training  # restored


def test_grouped_convolutions_are_left_as_they_are():
    from workers.unlearning.methods.svd_projection.projection import projected_layers

    net = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1), nn.Flatten(), nn.Linear(2, 3))
    assert sorted(projected_layers(net)) == ["1", "3"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_projection_matches_the_cpu_one():
    """The whole forget (Grams, eigh, projection, BatchNorm re-estimation) on CUDA against the same
    on the CPU, from the same trained conv net with BatchNorm and a non-square input."""
    from workers.unlearning.data import TensorSource
    from workers.unlearning.methods.svd_projection.method import SvdProjection
    from workers.unlearning.standard import StandardModel

    method = SvdProjection()
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5, 1, 6, 10, generator=g) * 2
    y = torch.randint(0, 5, (1500,), generator=g)
    x = (means[y] + torch.randn(1500, 1, 6, 10, generator=g)).reshape(1500, -1)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Unflatten(1, (1, 6, 10)), nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, (3, 2), stride=(2, 1)), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 2 * 9, 5))

    cfg = method.config_cls(device="cpu", epochs=5, batch_size=128, alpha_r=30.0, alpha_f=100.0)
    trained = StandardModel(net(), "x", {})
    method.train(trained, TensorSource(x, y), cfg)
    gone = y == 3
    retained, removed = TensorSource(x[~gone], y[~gone]), TensorSource(x[gone], y[gone])
    results = {}
    for device in ("cpu", "cuda"):
        model = StandardModel(net(), "x", {}, device=device)
        model.network.load_state_dict(trained.network.state_dict())
        method.forget(model, retained, cfg.model_copy(update={"device": device}), removed=removed)
        results[device] = model
    cpu, gpu = results["cpu"].network.state_dict(), results["cuda"].network.state_dict()
    for k, v in cpu.items():
        if v.is_floating_point():
            torch.testing.assert_close(gpu[k].cpu(), v, rtol=1e-3, atol=1e-4 * float(v.abs().max().clamp(min=1.0)))
    acc = {d: method.evaluate(m, removed, cfg)["accuracy"] for d, m in results.items()}
    assert abs(acc["cpu"] - acc["cuda"]) <= 0.01, acc
