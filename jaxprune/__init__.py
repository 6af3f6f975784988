"""jaxprune: model pruning for JAX, Flax and optax.

TF ``tf.contrib.model_pruning`` semantics (Zhu & Gupta 2017) as pure functions over parameter
pytrees and chainable optax transforms, and the methods that came after: global, ERK, N:M and
channel pruning, one-shot and activation-aware (Wanda) pruning of trained models.
"""

from jaxprune._src.calibration import activation_norms, hessians, weight_layouts
from jaxprune._src.checkpoint import abstract_state
from jaxprune._src.hparams import PruningHParams, get_pruning_hparams, print_hparams
from jaxprune._src.layout import WeightLayout
from jaxprune._src.masks import (
    exact_threshold,
    expand_blocks,
    histogram_cdf,
    histogram_threshold,
    num_kept,
    pool_blocks,
    weight_mask,
)
from jaxprune._src.oneshot import FixedMasksState, fixed_masks, prune
from jaxprune._src.pruning import Pruning
from jaxprune._src.schedule import sparsity_schedule
from jaxprune._src.sequential import prune_sequential
from jaxprune._src.shrink import ShrinkReport, ShrunkFunction, format_report, shrink, shrink_nnx
from jaxprune._src.sparse import to_bcoo
from jaxprune._src.sparsegpt import sparsegpt
from jaxprune._src.state import (
    PruningState,
    apply_masks,
    get_pruning_state,
    strip_pruning,
    summaries,
)
from jaxprune._src.transform import magnitude_pruning
from jaxprune._src.tree import default_prunable, path_name
from jaxprune._src.wanda import wanda, wanda_scores

__version__ = "0.1.0"

__all__ = (
    "FixedMasksState",
    "Pruning",
    "PruningHParams",
    "PruningState",
    "ShrinkReport",
    "ShrunkFunction",
    "WeightLayout",
    "abstract_state",
    "activation_norms",
    "apply_masks",
    "default_prunable",
    "exact_threshold",
    "expand_blocks",
    "fixed_masks",
    "format_report",
    "get_pruning_hparams",
    "get_pruning_state",
    "hessians",
    "histogram_cdf",
    "histogram_threshold",
    "magnitude_pruning",
    "num_kept",
    "path_name",
    "pool_blocks",
    "print_hparams",
    "prune",
    "prune_sequential",
    "shrink",
    "shrink_nnx",
    "sparsegpt",
    "sparsity_schedule",
    "strip_pruning",
    "summaries",
    "to_bcoo",
    "wanda",
    "wanda_scores",
    "weight_layouts",
    "weight_mask",
)
