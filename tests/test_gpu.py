"""On a CUDA device: fp16 + channels-last training writes a model that predicts on the GPU as on the CPU."""
import numpy as np
import pytest

from cxr_fast.inference.predictor import Predictor
from cxr_fast.data.table import build_table
from cxr_fast.training.run import train

pytestmark = pytest.mark.gpu  # skipped without CUDA (conftest.py)

TINY = dict(arch="test_resnet", pretrained=False, size=32, bs=8, num_workers=0, aug="none")


def test_mixed_precision_training_on_cuda_predicts_the_same_on_cpu(tmp_path):
    table = build_table("phantom", tmp_path / "ph", "3class", patients_per_class=6, image_size=48, test_pct=0.2)
    result = train(table=table, out=tmp_path / "run", plan="all:1@1e-3", mixed_precision=True, **TINY)
    assert result["valid"]["n"] == int((table["split"] == "valid").sum())
    paths = table.loc[table["split"] == "test", "path"].tolist()
    on_gpu = Predictor.from_dir(tmp_path / "run", device="cuda").predict_proba(paths)[0]
    on_cpu = Predictor.from_dir(tmp_path / "run", device="cpu").predict_proba(paths)[0]
    assert np.allclose(on_gpu, on_cpu, atol=1e-3)
