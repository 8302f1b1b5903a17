"""Where the recipe must equal the authors' code, each against a float64 re-statement written here.

- the shared head learns from both branches (the authors apply their connector to the detached target
  features outside ``no_grad``): its gradient equals a batch-1 float64 soft-DTW divergence through a
  naive loop;
- the soft-DTW divergence returns the gradient of its second input (the target side);
- the optimiser is s3prl's AdamW (eps added to the uncorrected sqrt(v), step size
  lr sqrt(1 - b2^t) / (1 - b1^t), decoupled decay after the step), not torch.optim.AdamW.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from score_upstream.models.hubert import new_hubert, tiny_model_cfg
from score_upstream.sdtw.divergence import soft_dtw_divergence
from score_upstream.training.config import ModelConfig
from score_upstream.training.model import ScoreModel
from score_upstream.training.optim import AdamW
from sdtw_reference import naive_sdtw

NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, dropout_features=0.0)


def _score_model() -> ScoreModel:
    return ScoreModel(new_hubert(tiny_model_cfg(**NO_DROPOUT), seed=0), ModelConfig(head_dim=16), seed=0)


def _divergence64(a: torch.Tensor, b: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """The authors' loss for one pair: soft-DTW divergence on squared Euclidean costs, / (N + M)."""
    def sdtw(x, y):
        return naive_sdtw(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1), gamma)

    return (sdtw(a, b) - 0.5 * (sdtw(a, a) + sdtw(b, b))) / (a.shape[0] + b.shape[0])


def _head_grad_reference(wav_s, wav_t, target_head_learns: bool) -> torch.Tensor:
    """Head gradient (weight and bias, flattened) of the batch-1 loss in float64."""
    ref = _score_model().to(torch.float64)
    with torch.no_grad():
        xs, _ = ref.encode(ref.student, wav_s.double(), torch.tensor([wav_s.shape[1]]))
        xt, _ = ref.encode(ref.target, wav_t.double(), torch.tensor([wav_t.shape[1]]))
    w = ref.head.weight.detach().clone().requires_grad_(True)
    b = ref.head.bias.detach().clone().requires_grad_(True)
    zs = F.normalize(xs[0] @ w.T + b, dim=-1)
    if target_head_learns:  # the authors: connector(target_features.detach()) outside no_grad
        zt = F.normalize(xt[0] @ w.T + b, dim=-1)
    else:  # the departure issue 11 found: the target projected without gradient
        zt = F.normalize(xt[0] @ w.detach().T + b.detach(), dim=-1)
    _divergence64(zs, zt).backward()
    return torch.cat([w.grad.reshape(-1), b.grad])


def test_head_gradient_equals_the_authors_loss_in_float64():
    g = torch.Generator().manual_seed(3)
    wav_s = 0.1 * torch.randn(1, 8000, generator=g)
    wav_t = 0.1 * torch.randn(1, 7040, generator=g)  # a view of another length, as after 1.1x speed
    model = _score_model()
    s, sl, t, tl = model(wav_s, torch.tensor([8000]), wav_t, torch.tensor([7040]))
    soft_dtw_divergence(s, t, sl, tl, gamma=0.1, normalize=True).sum().backward()
    ours = torch.cat([model.head.weight.grad.reshape(-1), model.head.bias.grad]).double()

    expected = _head_grad_reference(wav_s, wav_t, target_head_learns=True)
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max()))
    # the test can tell the two formulations apart: student-branch-only differs clearly
    student_only = _head_grad_reference(wav_s, wav_t, target_head_learns=False)
    cosine = float(F.cosine_similarity(student_only, expected, dim=0))
    assert cosine < 0.99 or abs(student_only.norm() / expected.norm() - 1) > 0.1, cosine
    # the target network itself never learns
    assert all(p.grad is None for p in model.target.parameters())


def test_soft_dtw_divergence_returns_the_target_side_gradient():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(1, 7, 4, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    y_valid = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    y = torch.cat([y_valid, torch.randn(3, 4, generator=g, dtype=torch.float64)])[None].requires_grad_(True)
    div = soft_dtw_divergence(x, y, torch.tensor([7]), torch.tensor([5]), gamma=0.1, normalize=True)
    div.sum().backward()
    assert y.grad is not None and x.grad is not None
    xr, yr = x.detach()[0].clone().requires_grad_(True), y_valid.clone().requires_grad_(True)
    ref = _divergence64(xr, yr)
    ref.backward()
    torch.testing.assert_close(div[0], ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y.grad[0, :5], yr.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(x.grad[0], xr.grad, rtol=1e-8, atol=1e-12)
    assert y.grad[0, 5:].abs().sum() == 0  # padding gets no gradient
    assert float(yr.grad.abs().max()) > 0


def _s3prl_adamw64(params, grads, lrs, betas, eps, wd):
    """Float64 re-statement of s3prl's AdamW (s3prl/optimizers.py), one list entry per step."""
    b1, b2 = betas
    p = [x.double().clone() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    for t, (step_grads, lr) in enumerate(zip(grads, lrs), start=1):
        for k, gr in enumerate(step_grads):
            gr = gr.double()
            m[k] = b1 * m[k] + (1 - b1) * gr
            v[k] = b2 * v[k] + (1 - b2) * gr * gr
            step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p[k] = p[k] - step * m[k] / (v[k].sqrt() + eps)
            p[k] = p[k] - lr * wd * p[k]
    return p


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_adamw_first_10_steps_equal_s3prl_update(dtype, tol):
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=g, dtype=dtype), torch.randn(3, generator=g, dtype=dtype)]
    # gradients near eps, where eps before or after the bias correction matters most
    grads = [[1e-6 * torch.randn(x.shape, generator=g, dtype=dtype) for x in start] for _ in range(10)]
    lrs = [2e-2 * (t + 1) / 10 for t in range(10)]  # changing, as under the warm-up schedule
    betas, eps, wd = (0.9, 0.999), 1e-7, 0.01
    params = [torch.nn.Parameter(x.clone()) for x in start]
    opt = AdamW(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=wd)
    for step_grads, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        for p, gr in zip(params, step_grads):
            p.grad = gr.clone()
        opt.step()
    expected = _s3prl_adamw64(start, grads, lrs, betas, eps, wd)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=tol, atol=tol)
    assert opt.state[params[0]]["step"] == 10

    # torch.optim.AdamW adds eps after the bias correction: clearly another trajectory here
    tparams = [torch.nn.Parameter(x.clone()) for x in start]
    topt = torch.optim.AdamW(tparams, lr=lrs[0], betas=betas, eps=eps, weight_decay=wd)
    for step_grads, lr in zip(grads, lrs):
        topt.param_groups[0]["lr"] = lr
        for p, gr in zip(tparams, step_grads):
            p.grad = gr.clone()
        topt.step()
    moved = (expected[0] - start[0].double()).abs().max()
    assert (tparams[0].detach().double() - expected[0]).abs().max() > 0.05 * moved


def test_adamw_state_loads_weights_only(tmp_path):
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdamW([p], lr=1e-3)
    p.grad = torch.full((3,), 0.5)
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    sd = torch.load(tmp_path / "opt.pt", weights_only=True)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = AdamW([q], lr=1e-3)
    opt2.load_state_dict(sd)
    p.grad = q.grad = torch.full((3,), -0.25)
    opt.step()
    opt2.step()
    assert torch.equal(p, q)
