"""``corral distill``: knowledge distillation of a teacher's next-token distributions into a smaller student
(forward KL, optionally from cached top-k targets), on local text and the teacher's own samples; the student
comes out as an HF Llama directory that the loader, ``corral eval`` and ``corral quantize`` read."""

from corral.compress.distill.config import DistillConfig, DistillError, training_dtype
from corral.compress.distill.pipeline import DistillInputs, DistillReport, distill

__all__ = ["DistillConfig", "DistillError", "DistillInputs", "DistillReport", "distill", "training_dtype"]
