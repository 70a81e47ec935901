"""FastAdam: fastai's Adam/AdamW arithmetic, hyper-parameters and state, with torch's fused step."""
from functools import partial

import pytest
import torch
from fastai.optimizer import Adam

from cxr_fast.training.optim import FastAdam


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=g)), torch.nn.Parameter(torch.randn(8, generator=g)),
            torch.nn.Parameter(torch.randn(5, 8, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def _run(opt_func, steps=6, frozen_until=3):
    "Two layer groups, discriminative lr, a mom schedule, do_wd off for the 1-d params, group 0 frozen at first."
    params = _params()
    opt = opt_func([params[:2], params[2:]], lr=1e-2)
    for p in (params[1], params[3]): opt.state[p]["do_wd"] = False
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        opt.set_hyper("lr", [1e-3, 1e-2])
        opt.set_hyper("mom", 0.95 - 0.01 * i)
        for j, p in enumerate(params):
            p.grad = None if (j < 2 and i < frozen_until) else torch.randn(p.shape, generator=g)
        opt.step()
    return params, opt


@pytest.mark.parametrize("decouple_wd", [True, False])
def test_same_updates_as_fastai_adam(decouple_wd):
    ref, ref_opt = _run(partial(Adam, wd=0.1, decouple_wd=decouple_wd))
    new, new_opt = _run(partial(FastAdam, wd=0.1, decouple_wd=decouple_wd))
    for a, b in zip(ref, new): assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(ref, new):
        sa, sb = ref_opt.state[a], new_opt.state[b]
        assert sa["step"] == sb["step"] and torch.allclose(sa["grad_avg"], sb["grad_avg"], atol=1e-7)
        assert torch.allclose(sa["sqr_avg"], sb["sqr_avg"], atol=1e-7)


def test_state_dict_loads_into_fastai_adam_and_back():
    _, new_opt = _run(FastAdam)
    params = _params()
    other = Adam([params[:2], params[2:]], lr=1e-2)
    other.load_state_dict(new_opt.state_dict())
    assert [s["step"] for s in other.state_dict()["state"]] == [s["step"] for s in new_opt.state_dict()["state"]]
    again = FastAdam([_params()[:2], _params()[2:]], lr=1e-2)
    again.load_state_dict(other.state_dict())
    assert again.state_dict()["state"][0]["step"] == 3
