"""Where each cxr_fast callback runs among fastai's own (a lower `order` runs first at every event)."""
import importlib.util

import pytest
from fastai.callback.core import TrainEvalCallback
from fastai.callback.fp16 import MixedPrecision
from fastai.callback.progress import CSVLogger, ProgressCallback
from fastai.callback.tracker import EarlyStoppingCallback, SaveModelCallback
from fastai.learner import Recorder

from cxr_fast.apps.tune import OptunaPruning
from cxr_fast.evaluation.runs import TTAViews
from cxr_fast.training.callbacks import (BestModel, BodyBnStats, EarlyStop, EpochLines, ResumeRecorder,
                                         RunCheckpoint)
from cxr_fast.training.precision import ChannelsLast, CpuBF16Autocast
from cxr_fast.training.tracking.base import EpochCallback
from cxr_fast.training.tracking.csv_tracker import OneHeaderCSVLogger
from cxr_fast.training.tracking.mlflow_tracker import MlflowEpochs


def test_tta_views_are_stacked_before_channels_last_and_autocast_see_the_batch():
    assert TTAViews.order < ChannelsLast.order < MixedPrecision.order == CpuBF16Autocast.order


def test_batchnorm_statistics_are_fixed_after_fastai_sets_train_mode():
    assert TrainEvalCallback.order < BodyBnStats.order < Recorder.order


def test_epoch_lines_take_the_logger_before_the_callbacks_that_wrap_it():
    assert Recorder.order < EpochLines.order < min(CSVLogger.order, ProgressCallback.order)
    assert OneHeaderCSVLogger.order == CSVLogger.order < ResumeRecorder.order


def test_last_checkpoint_holds_the_best_model_and_early_stopping_decisions_and_pruning_follows_it():
    assert BestModel.order == SaveModelCallback.order < EarlyStop.order == EarlyStoppingCallback.order
    assert EarlyStop.order < RunCheckpoint.order < OptunaPruning.order
    assert ResumeRecorder.order != RunCheckpoint.order  # no tie between the two resume callbacks


def test_trackers_log_an_epoch_after_the_recorder_has_it():
    assert Recorder.order < EpochCallback.order == MlflowEpochs.order < RunCheckpoint.order


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_logs_after_the_recorder():
    from cxr_fast.training.tracking.tensorboard_tracker import StagedTensorBoard
    assert Recorder.order < StagedTensorBoard.order < CSVLogger.order
