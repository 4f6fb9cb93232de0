"""Engines of both VKD stages, built on torchreid's Engine, and their builders."""
from vkd_torchreid.engine.base import EngineOptions, StopTraining, VKDEngineBase
from vkd_torchreid.engine.loss_values import NonFiniteLossError
from vkd_torchreid.engine.teacher import TeacherEngine
from vkd_torchreid.engine.vkd import DistillOptions, VKDEngine
from vkd_torchreid.models.student import freeze_teacher

__all__ = ["DistillOptions", "EngineOptions", "NonFiniteLossError", "StopTraining",
           "TeacherEngine", "VKDEngine", "VKDEngineBase", "freeze_teacher"]
