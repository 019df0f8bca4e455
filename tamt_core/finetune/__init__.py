"""Fine-tuning a subnetwork f(·; M ⊙ θ0) on a downstream task, the paper's measure of a ticket (§4.1, App. C).

A subnetwork starts from the pre-trained weights θ0 with a mask M applied and a fresh task head; the mask holds for
the whole run, so pruned entries are exactly zero at every forward pass and receive no gradient (reference-impl
§7.2, check vector 26). It is baked into the weights once, with the pruned entries' gradients zeroed
(:func:`~tamt_core.masks.masked_model.bake_fixed_mask`, whose docstring says why they then stay exactly zero),
rather than multiplied in at every forward: a masked step costs what a dense one does. Every other weight is trained
with Tab. 1's settings: AdamW, linear decay to zero, no warm-up, no weight decay, gradient norm clipped at 1.0. The
dev set is evaluated every "Eval Iter" steps and the result is the best of those periodic evaluations (App. C, check
vector 28); every evaluation is kept as the curve. The same loop with no mask is the paper's "Full" line.

A run is a :class:`FinetuneConfig` (its content hash is the run id) and an output directory. The directory
holds the run's identity (``run.json``), the curve so far (``curve.json``), a checkpoint taken at evaluation
points (``checkpoint.safetensors``) and, once done, ``result.json``; calling :func:`finetune` again on the same
directory continues an interrupted run, or returns the finished result without computing anything.
"""

from tamt_core.finetune.config import SUBSET_UNITS, Evaluation, FinetuneConfig, FinetuneResult, best_evaluation
from tamt_core.finetune.data import TaskData, load_task_data, train_batches
from tamt_core.finetune.evaluation import EVAL_BATCH_SIZE, chance_metrics, evaluate_task, head_in_fp32, task_model
from tamt_core.finetune.loop import CHECKPOINT_EVERY_S, finetune, train_step

__all__ = ["CHECKPOINT_EVERY_S", "EVAL_BATCH_SIZE", "SUBSET_UNITS", "Evaluation", "FinetuneConfig", "FinetuneResult",
           "TaskData", "best_evaluation", "chance_metrics", "evaluate_task", "finetune", "head_in_fp32",
           "load_task_data", "task_model", "train_batches", "train_step"]
