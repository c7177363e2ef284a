"""rnnkit's applications, each a ``Task`` the one trainer runs (see ``rnnkit.tasks.base``).

``TASKS`` maps a task's name (``rnnkit train NAME``, the checkpoint's kind) to its class.
"""

from rnnkit.tasks.base import Task
from rnnkit.tasks.classification import ClassifyConfig, ClassifyTask, SequenceClassifier
from rnnkit.tasks.ctc import CTCTask
from rnnkit.tasks.ctc_parts import CTCConfig, CTCModel
from rnnkit.tasks.forecasting import ForecastConfig, Forecaster, ForecastTask
from rnnkit.tasks.language_model import CharLM, LMConfig, LMTask, lm_loss
from rnnkit.tasks.music import MusicConfig, MusicRNN, MusicTask
from rnnkit.tasks.seq2seq import Seq2SeqConfig, Seq2SeqTask

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (LMTask, ClassifyTask, ForecastTask, Seq2SeqTask, CTCTask, MusicTask)
}

__all__ = [
    "TASKS",
    "CTCConfig",
    "CTCModel",
    "CTCTask",
    "CharLM",
    "ClassifyConfig",
    "ClassifyTask",
    "ForecastConfig",
    "ForecastTask",
    "Forecaster",
    "LMConfig",
    "LMTask",
    "MusicConfig",
    "MusicRNN",
    "MusicTask",
    "Seq2SeqConfig",
    "Seq2SeqTask",
    "SequenceClassifier",
    "Task",
    "lm_loss",
]
