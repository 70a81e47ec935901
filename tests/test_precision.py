"""Precision chosen by the machine: the decision on fake CPU flags, this machine, the deprecated aliases,
the once-only warning, the training callbacks, GradScaler state across a resume; and the machine record."""
import warnings

import pytest
import torch

from cxr_fast.training import precision as P
from cxr_fast.core.errors import CxrError
from cxr_fast.core.machine import cpu_flags, cpu_model, default_threads, machine_info, set_threads, usable_cores

AVX2_EPYC = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}            # the AMD EPYC of issue #13
AVX512_NO_BF16 = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
SAPPHIRE_RAPIDS = AVX512_NO_BF16 | {"avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.mark.parametrize("flags, expected", [(AVX2_EPYC, "fp32"), (AVX512_NO_BF16, "fp32"),
                                             (AVX512_NO_BF16 | {"avx512_bf16"}, "bf16"), (SAPPHIRE_RAPIDS, "bf16"),
                                             (set(), "fp32")])
def test_auto_on_fake_cpu_flags(flags, expected):
    p = P.decide_precision("auto", "cpu", flags=flags, env={})
    assert p.name == expected and p.requested == "auto" and p.device == "cpu" and p.channels_last
    assert ("native bf16" in p.reason) and p.reason.startswith("auto")


def test_auto_respects_onednn_isa_cap():
    "A bf16 CPU with oneDNN capped to AVX2 (ONEDNN_MAX_CPU_ISA) emulates bf16: auto picks fp32 and says why."
    p = P.decide_precision("auto", "cpu", flags=SAPPHIRE_RAPIDS, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert p.name == "fp32" and "ONEDNN_MAX_CPU_ISA" in p.reason
    assert P.decide_precision("auto", "cpu", flags=SAPPHIRE_RAPIDS, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}).name == "bf16"


def test_auto_on_this_machine(monkeypatch):
    "This machine's answer follows its own /proc/cpuinfo flags; capped to AVX2 (issue #13's EPYC) it is fp32."
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert P.decide_precision("auto", "cpu").name == ("bf16" if native else "fp32")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert P.decide_precision("auto", "cpu").name == "fp32"
    assert not P.cpu_supports_bf16()


def test_cuda_choices_and_errors():
    p = P.decide_precision("auto", "cuda")
    assert (p.name, p.channels_last) == ("fp16", True) and "gradient scaler" in p.reason
    assert P.decide_precision("fp32", "cuda").name == "fp32"
    assert P.decide_precision("bf16", "cuda", cuda_bf16=True).name == "bf16"
    with pytest.raises(CxrError, match="no bf16"): P.decide_precision("bf16", "cuda", cuda_bf16=False)
    with pytest.raises(CxrError, match="needs a CUDA device"): P.decide_precision("fp16", "cpu")
    with pytest.raises(CxrError, match="auto, fp32, bf16, fp16"): P.decide_precision("fp8", "cpu")
    assert P.decide_precision(" BF16 ", "cpu", flags=SAPPHIRE_RAPIDS).name == "bf16"


def test_record_and_console_line():
    p = P.decide_precision("auto", "cpu", flags=AVX2_EPYC, env={})
    d = p.as_dict()
    assert d == {"name": "fp32", "requested": "auto", "device": "cpu", "channels_last": True, "reason": p.reason}
    assert p.line().startswith("precision: fp32, channels-last on cpu (asked: auto;")
    assert p.dtype is None and P.decide_precision("bf16", "cpu").dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, device, expected, aliased", [
    (dict(bf16=True), "cpu", "bf16", True), (dict(bf16=False), "cpu", "fp32", True),
    (dict(mixed_precision=True), "cpu", "auto", False),          # it never applied to a CPU
    (dict(mixed_precision=True, bf16=False), "cpu", "fp32", True),
    (dict(mixed_precision=True), "cuda", "fp16", True), (dict(mixed_precision=False), "cuda", "fp32", True),
    (dict(bf16=True, mixed_precision=True), "cuda", "bf16", True), (dict(bf16=False), "cuda", "auto", False),
    (dict(precision="fp32", bf16=False), "cpu", "fp32", True), (dict(), "cpu", "auto", False),
    (dict(precision=None), "cpu", "auto", False),
])
def test_deprecated_aliases(kwargs, device, expected, aliased):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name, note = P.precision_from_aliases(device=device, **kwargs)
    assert name == expected
    assert bool(note) == aliased == any(issubclass(w.category, DeprecationWarning) for w in caught)
    if note: assert "deprecated: use --precision" in note


def test_alias_contradicting_precision_is_an_error():
    with pytest.raises(CxrError, match="contradicts"):
        P.precision_from_aliases("fp32", bf16=True, device="cpu")


def test_resolve_keeps_the_alias_in_the_reason():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = P.resolve_precision(bf16=False, device="cpu")
    assert p.name == "fp32" and "--bf16" in p.reason and "deprecated" in p.reason


def test_emulated_bf16_warns_once_with_the_measured_cost(monkeypatch):
    monkeypatch.setattr(P, "cpu_supports_bf16", lambda flags=None, env=None: False)
    monkeypatch.setattr(P, "measure_bf16_cost", lambda: 7.9)
    monkeypatch.setattr(P, "_warned_bf16", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3): assert P.resolve_precision("bf16", device="cpu").name == "bf16"
        P.resolve_precision("fp32", device="cpu")
    slow = [w for w in caught if issubclass(w.category, P.PrecisionWarning)]
    assert len(slow) == 1 and "7.9x slower" in str(slow[0].message) and "--precision auto or fp32" in str(slow[0].message)


def test_native_bf16_does_not_warn(monkeypatch):
    monkeypatch.setattr(P, "cpu_supports_bf16", lambda flags=None, env=None: True)
    monkeypatch.setattr(P, "_warned_bf16", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.PrecisionWarning)
        P.resolve_precision("bf16", device="cpu")


def test_measure_bf16_cost_is_a_ratio():
    assert P.measure_bf16_cost() > 0


def _synth_learner():
    from fastai.test_utils import synth_learner
    return synth_learner(n_trn=3)


def test_auto_predicts_in_fp32_on_any_cpu_and_trains_in_bf16_where_native():
    "One model file, one answer: predict's auto is fp32 on a CPU with or without bf16; bf16 only when asked for."
    for flags in (SAPPHIRE_RAPIDS, AVX2_EPYC):
        p = P.decide_precision("auto", "cpu", flags=flags, env={}, purpose="predict")
        assert p.name == "fp32" and p.reason == P.PREDICT_FP32
    assert P.decide_precision("auto", "cpu", flags=SAPPHIRE_RAPIDS, env={}).name == "bf16"  # training
    assert P.decide_precision("bf16", "cpu", flags=SAPPHIRE_RAPIDS, env={}, purpose="predict").name == "bf16"
    assert P.decide_precision("auto", "cuda", purpose="predict").name == "fp16"


def test_a_bf16_learner_evaluates_in_fp32_as_predict_does():
    from fastai.learner import Learner
    from fastai.losses import MSELossFlat
    from fastai.test_utils import synth_dbunch
    model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))  # autocast's matmuls
    learn = P.apply_precision(Learner(synth_dbunch(), model, loss_func=MSELossFlat()), P.decide_precision("bf16", "cpu"))
    x = learn.dls.valid.one_batch()[0]
    with torch.no_grad(): exact = learn.model(x)
    with learn.no_bar(), learn.no_logging():
        with P.evaluating_as_predict(learn): inside, _ = learn.get_preds(dl=learn.dls.valid)
        outside, _ = learn.get_preds(dl=learn.dls.valid)  # bf16 autocast: the outputs rounded to bf16
    assert any(isinstance(cb, P.CpuBF16Autocast) for cb in learn.cbs)  # back after the block
    assert torch.equal(inside[:len(exact)], exact) and not torch.equal(outside[:len(exact)], exact)


def test_apply_precision_callbacks():
    learn = P.apply_precision(_synth_learner(), P.decide_precision("bf16", "cpu"))
    assert any(isinstance(cb, P.CpuBF16Autocast) for cb in learn.cbs)
    learn = P.apply_precision(_synth_learner(), P.decide_precision("fp32", "cpu"))
    assert not any(isinstance(cb, (P.CpuBF16Autocast, P.DeviceMixedPrecision)) for cb in learn.cbs)
    assert any(isinstance(cb, P.ChannelsLast) for cb in learn.cbs)  # CPU_CHANNELS_LAST["train"]
    learn = P.apply_precision(_synth_learner(), P.decide_precision("auto", "cuda"))  # callbacks only, nothing runs
    assert any(isinstance(cb, P.DeviceMixedPrecision) for cb in learn.cbs)
    assert any(isinstance(cb, P.ChannelsLast) for cb in learn.cbs)


def test_bf16_autocast_training_step_runs_on_cpu():
    learn = P.apply_precision(_synth_learner(), P.decide_precision("bf16", "cpu"))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert torch.isfinite(torch.tensor(learn.recorder.losses)).all()


def test_grad_scaler_state_survives_a_resume():
    "fp16 with a CPU GradScaler (torch.amp on CPU): the scale saved mid-run is where the next fit starts."
    from fastai.callback.core import Callback

    class Grab(Callback):
        order = 20
        def after_step(self): self.state = P.scaler_state(self.learn)

    class Peek(Callback):
        order = 11  # after DeviceMixedPrecision's before_fit
        def before_fit(self): self.scale = self.learn.scaler.get_scale()

    learn, grab = _synth_learner(), Grab()
    learn.add_cbs([P.DeviceMixedPrecision("fp16", "cpu", init_scale=2.0 ** 10, growth_interval=1), grab])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert grab.state["scale"] > 2.0 ** 10  # grew once per step: the state is not the initial one
    resumed, peek = _synth_learner(), Peek()
    resumed.add_cbs([P.DeviceMixedPrecision("fp16", "cpu", growth_interval=1), peek])
    P.set_scaler_state(resumed, grab.state)
    with resumed.no_bar(), resumed.no_logging(): resumed.fit(1, 1e-2)
    assert peek.scale == grab.state["scale"]
    assert P.scaler_state(_synth_learner()) is None


# ---- the machine --------------------------------------------------------------------------------

def test_cpu_flags_and_model_from_cpuinfo_text():
    text = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\n"
    assert cpu_flags(text) == {"fpu", "avx2", "fma"} and cpu_model(text) == "AMD EPYC 9B14"
    assert cpu_flags("") == set()


def test_threads_follow_the_machine(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads() == usable_cores() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads() == 1  # a count lowered earlier is kept; never above the usable cores
        torch.set_num_threads(usable_cores() + 3)
        assert set_threads() == usable_cores()
    finally:
        torch.set_num_threads(before)


def test_one_worker_rule_reads_the_usable_cores(monkeypatch):
    from cxr_fast.core import machine
    monkeypatch.setattr(machine, "usable_cores", lambda: 2)
    assert machine.default_workers(reserve=1) == 1 and machine.default_workers() == 2  # processes; threads
    assert machine.default_workers(per_core=2, cap=8) == 4
    monkeypatch.setattr(machine, "usable_cores", lambda: 1)
    assert machine.default_workers(reserve=1) == 0 and machine.default_workers() == 1
    monkeypatch.setattr(machine, "usable_cores", lambda: 64)
    assert machine.default_workers(reserve=1) == 4 and machine.default_workers(per_core=2, cap=8) == 8


def test_machine_info_records_what_a_benchmark_needs():
    info = machine_info(workers=0, precision="fp32", shared=True)
    for key in ("cpu_model", "cpu_flags", "cpu_flags_speed", "usable_cores", "torch", "torch_threads", "gpu"):
        assert key in info
    assert info["workers"] == 0 and info["precision"] == "fp32" and info["shared"] is True


# ---- on a GPU (skipped without CUDA) ------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["auto", "bf16"])  # auto: fp16 + GradScaler + channels-last; bf16 autocast
def test_mixed_precision_training_on_cuda(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported(): pytest.skip("this GPU has no bf16")
    learn = _synth_learner()
    learn.dls.to("cuda")
    learn.model.cuda()
    P.apply_precision(learn, P.decide_precision(precision, "cuda"))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert torch.isfinite(torch.tensor(learn.recorder.losses)).all()


def test_channels_last_by_purpose():
    "channels-last wherever CPU_CHANNELS_LAST says (on a CPU: both, it measured faster); on CUDA always."
    for purpose, on in P.CPU_CHANNELS_LAST.items():
        assert P.decide_precision("fp32", "cpu", purpose=purpose).channels_last == on
    assert P.decide_precision("fp32", "cpu").channels_last  # train
    assert P.decide_precision("fp32", "cpu", purpose="predict").channels_last
    assert P.decide_precision("auto", "cpu", flags=AVX2_EPYC, env={}, purpose="predict").channels_last
    assert P.decide_precision("auto", "cuda", purpose="predict").channels_last
    with pytest.raises(ValueError): P.decide_precision("auto", "cpu", purpose="serve")


# ---- train records the choice --------------------------------------------------------------------

def test_train_records_the_precision_and_why(tmp_path, capsys):
    "config.json, report.md and the console say what ran and why; the deprecated --bf16 still works."
    import json

    from cxr_fast.data.table import build_table
    from cxr_fast.training.run import train
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=4, image_size=40)
    tiny = dict(arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none", epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        train(table=table, out=tmp_path / "run", bf16=False, **tiny)
    used = json.loads((tmp_path / "run" / "config.json").read_text())["precision_used"]
    assert used["name"] == "fp32" and used["requested"] == "fp32" and "--bf16" in used["reason"]
    assert "Precision: fp32, channels-last on cpu" in (tmp_path / "run" / "report.md").read_text()
    assert "precision: fp32, channels-last on cpu" in capsys.readouterr().out
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=True)
    assert "scaler" in last and last["scaler"] is None  # fp32: no GradScaler state to resume
    with P.default_precision("bf16"):
        train(table=table, out=tmp_path / "run2", **tiny)
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["precision_used"]["name"] == "bf16"
    with pytest.raises(CxrError, match="contradicts"):
        train(table=table, out=tmp_path / "run3", precision="fp32", bf16=True, **tiny)
