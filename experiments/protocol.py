"""The study's protocols: image size, seeds, batch size and epochs of every experiment.

- `quick`: the embedded BCCD originals, minutes on a laptop CPU (the README's main command). Its optimizers
  comparison sees each photo's white cell cropped at the cell's own scale, flipped and turned by right
  angles, and standardised per image: on 268 training photos the plain base CNN stays near the
  majority baseline (results/REPORT.md, README).
- `cpu`: the full augmented set at 60x80 on a 2-core CPU, at the study's own budgets where its claims
  are about training length: the optimizers 50 epochs, Adam 100, which makes it the overfitting run
  too (the same model, optimizer and seeds: its first 50 epochs are the optimizers' comparison, so
  the study's overfitting step needs no run of its own); dropout, batch norm and centering (base and
  expanded CNN) 30, past the base CNN's overfitting point; centering, a claim about initialisations,
  with 8 seeds; the architecture section (depth, the deep CNN's init, kernel counts and sizes) 30;
  VGG16's frozen variants 20 epochs at most (experiments.vgg stops a variant once its training set is
  learnt), all-trainable and scratch what two cores allow; the optimizers once more at 120x160, 50
  epochs each. The deep recipe keeps its short budget (the wall time of every committed run is in
  results/REPORT.md).
- `gpu`: the study's own protocol (120x160, 50 epochs, the overfitting run 200).

`cpu` checkpoints after every epoch (an epoch of the augmented set takes minutes there), so a killed
run resumes losing at most one epoch; `gpu` every 5, `quick` every 10.

The study's steps (`STEPS`): the experiment invocations `python -m experiments.study` makes for a
protocol, each into its own run folder, and the part of the study each counts towards (`PARTS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bccd_jax.experiment import Protocol

PROTOCOLS = {
    "quick": Protocol(
        "quick", "embedded originals, 32x40, minutes on a CPU", dataset="originals", image_size=(32, 40), seeds=5,
        batch_size=32,
        epochs={"optimizers": 50, "regularization": 30, "regularization/overfit": 200, "architecture": 30,
                "recipe": 30, "recipe/tuned": 10, "vgg": 10, "cell_crops": 30},
        group_seeds={"regularization/centering": 10},
        # the README's main command: 268 training photos tell the study's story only when the network sees the
        # cell (cropped around it at its own scale), in every orientation (as the augmented set's offline flips
        # and rotations gave it), with each image standardised (its stain's strength removed)
        crops={"optimizers": "cell", "cell_crops": "cell"},
        settings={"optimizers": ("input_norm=image", "augment.flip=true", "augment.rot90=true")}),
    "cpu": Protocol(
        "cpu", "augmented set, 60x80, 2 CPU cores", dataset="augmented", image_size=(60, 80), seeds=5,
        batch_size=32,
        epochs={"optimizers": 50, "optimizers/adam": 100, "regularization": 30, "regularization/overfit": 200,
                "architecture": 30, "recipe": 8, "recipe/tuned": 3, "vgg/frozen_blocks1-4": 20,
                "vgg/frozen_blocks1-3": 20, "vgg": 2, "cell_crops": 8},
        group_seeds={"optimizers/optimizers": 3, "regularization/overfit": 3, "regularization/dropout": 3,
                     "regularization/batchnorm": 3, "regularization/centering": 8, "architecture/depth": 3,
                     "architecture/init": 3,
                     "architecture/centering": 3, "architecture/kernels": 3, "vgg/frozen_blocks1-4": 3,
                     "vgg/frozen_blocks1-3": 3, "vgg/all_trainable": 2, "vgg/scratch": 2},
        checkpoint_every=1, crops={"cell_crops": "cell"}),
    "gpu": Protocol(
        "gpu", "the study's own: augmented set, 120x160, 50 epochs", dataset="augmented", image_size=(120, 160),
        seeds=5, batch_size=32,
        epochs={"optimizers": 50, "regularization": 50, "regularization/overfit": 200, "architecture": 50,
                "recipe": 50, "recipe/tuned": 15, "vgg": 20, "cell_crops": 50},
        group_seeds={"regularization/centering": 10}, checkpoint_every=5, crops={"cell_crops": "cell"}),
}


@dataclass(frozen=True)
class Step:
    name: str  # folder under --out
    experiment: str  # module under experiments/
    flags: tuple[str, ...] = ()
    needs_weights: bool = False
    part: str = "study"  # what the step's wall time counts towards in the report's header (PARTS)
    init_from: str | None = None  # a step whose latest, finished run the variants fine-tune (--init-from)


ROBUSTNESS = "robustness"  # a step that evaluates the run of another step, not an experiment of its own
PARTS = {"study": "the study's experiments and its headline (the best recipe)",
         "robustness": "the robustness comparison (the best recipe's augmentation off, wider, zoom and JPEG "
                       "on all or half, and fine-tuned under them on a half or a quarter)",
         "other_labs": "models for other labs' images (the deep recipe on cell crops)"}

# the same in both protocols: best's seeds fine-tuned, each step from the latest finished run of recipe-best
FINE_TUNING = (
    Step("recipe-best-tuned", "recipe", ("--variants", "best_tuned"), part="robustness", init_from="recipe-best"),
    Step("recipe-best-tuned-gentle", "recipe", ("--variants", "best_tuned_gentle"), part="robustness",
         init_from="recipe-best"),
    Step("recipe-best-tuned-quarter", "recipe", ("--variants", "best_tuned_quarter"), part="robustness",
         init_from="recipe-best"),
)

STEPS: dict[str, tuple[Step, ...]] = {
    # wall times of every run in results/REPORT.md
    "cpu": (
        Step("recipe-best", "recipe", ("--variants", "best")),
        Step("recipe-best-noaug", "recipe", ("--variants", "best_noaug"), part="robustness"),
        Step("recipe-best-wide", "recipe", ("--variants", "best_wide"), part="robustness"),
        Step("recipe-best-zoom", "recipe", ("--variants", "best_zoom"), part="robustness"),
        Step("recipe-best-zoom-half", "recipe", ("--variants", "best_zoom_half"), part="robustness"),
        *FINE_TUNING,
        Step("cell-crops", "cell_crops", ("--variants", "saturation"), part="other_labs"),
        Step("vgg", "vgg", ("--variants", "frozen_blocks1-4", "frozen_blocks1-3"), needs_weights=True),
        Step("optimizers", "optimizers"),
        Step("regularization", "regularization", ("--parts", "dropout", "batchnorm", "centering")),
        Step("architecture-centering", "architecture", ("--parts", "centering")),
        Step("vgg-trainable", "vgg", ("--variants", "all_trainable", "scratch"), needs_weights=True),
        # the architecture section at the study's budget: the base CNN is the optimizers' Adam run (the same
        # model, optimizer, data and seeds: its first 30 epochs are this budget) and the expanded CNN the
        # centering step's uncentred arm, so these steps train only what no other step has
        Step("architecture-depth-init", "architecture", ("--parts", "depth", "init", "--variants", "deep",
                                                          "deep_init_keras")),
        Step("architecture-kernels", "architecture", ("--parts", "kernels", "--variants", "filters_16", "filters_64",
                                                      "kernel_5x5", "kernel_7x7")),
        # the optimizer comparison at twice the side (the study never states its input size): 50 epochs for all three;
        # evaluated 64 images at a time (at 120x160 three seeds' evaluation batches of 256 took 20 GB of 24)
        Step("optimizers-120x160", "optimizers", ("--image-size", "120", "160", "--epochs", "50", "--set",
                                                  "eval_batch_size=64")),
    ),
    "gpu": (
        Step("optimizers", "optimizers"),
        Step("regularization", "regularization"),
        Step("architecture", "architecture"),
        Step("recipe-best", "recipe",
             ("--variants", "best", "best_noaug", "best_wide", "best_zoom", "best_zoom_half")),
        *FINE_TUNING,
        Step("vgg", "vgg", needs_weights=True),
    ),
}
ROBUSTNESS_OF = ("recipe-best", "recipe-best-noaug", "recipe-best-wide", "recipe-best-zoom",
                 "recipe-best-zoom-half", *(s.name for s in FINE_TUNING))
"""Steps whose runs the robustness suite evaluates (bccd_jax.robustness)."""


def step_of(run_path: Path, protocol: str | None) -> Step | None:
    """The study step that made a run folder (`--out/<step>/<experiment>/<stamp>`), or None for a run made
    outside the study command (a screen, a run of one experiment)."""
    name, experiment = run_path.parent.parent.name, run_path.parent.name
    return next((s for s in STEPS.get(protocol or "", ()) if s.name == name and s.experiment == experiment), None)
