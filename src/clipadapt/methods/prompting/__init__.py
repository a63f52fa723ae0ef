"""Methods that learn prompts or adapters inside the towers (they read ``DataKind.TOWER``)."""

from clipadapt.methods.prompting.base import TowerMethod
from clipadapt.methods.prompting.coop import CoCoOp, CoOp, KgCoOp
from clipadapt.methods.prompting.deep import IVLP, DeepPromptedBackend, MaPLe
from clipadapt.methods.prompting.lora import ImageLoRA, LoRAImageBackend, TextLoRA
from clipadapt.methods.prompting.unlabeled import PromptDistill, UnsupervisedCoOp
from clipadapt.methods.prompting.visual import PromptedImageBackend, VisualPrompt

__all__ = [
    "IVLP",
    "CoCoOp",
    "CoOp",
    "DeepPromptedBackend",
    "ImageLoRA",
    "KgCoOp",
    "LoRAImageBackend",
    "MaPLe",
    "PromptDistill",
    "PromptedImageBackend",
    "TextLoRA",
    "TowerMethod",
    "UnsupervisedCoOp",
    "VisualPrompt",
]
