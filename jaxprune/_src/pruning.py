"""``Pruning``: TF's ``tf.contrib.model_pruning.Pruning`` class, functional, for porting TF code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from jaxprune._src import state as state_lib
from jaxprune._src import transform as transform_lib
from jaxprune._src.hparams import (
    PruningHParams,
    _format_value,
    get_pruning_hparams,
    print_hparams,
)
from jaxprune._src.state import PruningState
from jaxprune._src.transform import SparsityArg, _Pruner


class Pruning:
    """TF's ``Pruning`` class as pure functions over a :class:`PruningState`.

    TF's methods mutate graph variables; here each returns a new state. The
    global step is the state's ``count`` unless ``step`` is passed (TF read it
    from its ``global_step`` variable). :func:`magnitude_pruning` is built on
    the same functions.

    Args:
      spec: pruning hyperparameters (:func:`get_pruning_hparams`), a dict or a
        TF HParams string; None means TF's defaults.
      sparsity: an external sparsity schedule ``step -> sparsity`` or a
        constant, overriding the spec's sparsity function (TF's ``sparsity``
        variable).
      params_filter: which leaves are pruned (see :func:`magnitude_pruning`).

    Raises:
      ValueError: for invalid hparams or sparsity.

    ``repr(p)`` shows the hyperparameters that differ from TF's defaults as a
    TF HParams string, which ``Pruning(spec=...)`` accepts back.

    Examples:
      >>> import jax.numpy as jnp, jaxprune
      >>> p = jaxprune.Pruning(jaxprune.get_pruning_hparams().replace(pruning_frequency=2))
      >>> params = {"layer1": {"weights": jnp.linspace(1., 100., 100).reshape(10, 10)}}
      >>> state = p.init(params)
      >>> state = p.conditional_mask_update(params, state, step=50)   # s(50) = 0.4375
      >>> int(jaxprune.apply_masks(params, state)["layer1"]["weights"].astype(bool).sum())
      56
      >>> p
      Pruning(spec='pruning_frequency=2')
      >>> float(p.sparsity_at(50)), float(p.sparsity(50))    # the schedule at step 50
      (0.4375, 0.4375)

    References:
      Zhu & Gupta, "To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878
    """

    def __init__(
        self, spec: Any = None, sparsity: SparsityArg = None, *, params_filter: Any = None
    ):
        self._pruner = _Pruner(spec, sparsity, params_filter)
        self._sparsity = sparsity
        self._params_filter = params_filter
        # Compiled once per params structure, so eager calls (as in ported TF code) are fast.
        self._mask_update = jax.jit(self._pruner.mask_update, static_argnames=("force",))
        self._static = self._pruner.bind(None)  # update_masks' constant sparsity: an argument

    @property
    def hparams(self) -> PruningHParams:
        """The validated hyperparameters (TF's ``_spec``)."""
        return self._pruner.hparams

    @property
    def sparsity(self) -> Callable[[Any], jax.Array]:
        """The global sparsity schedule, ``step -> sparsity`` (TF's ``sparsity`` tensor).

        A ``Pruning`` holds no step, so its sparsity is the schedule itself: the
        spec's sparsity function, or the external ``sparsity`` given to the
        constructor. It returns a float32 scalar and can be called with a traced
        step, so ``p.sparsity(step)`` gives the value at ``step`` (as when this
        was a method) and ``p.sparsity`` can be plotted or passed on as an optax
        schedule. :meth:`sparsity_at` is the same call under a clearer name.

        Examples:
          >>> import jaxprune
          >>> p = jaxprune.Pruning("target_sparsity=0.8,sparsity_function_end_step=10")
          >>> [round(float(p.sparsity(t)), 4) for t in (0, 5, 10, 20)]
          [0.0, 0.7, 0.8, 0.8]
        """
        return self._pruner.global_sparsity

    def sparsity_at(self, step: jax.typing.ArrayLike) -> jax.Array:
        """The scheduled global sparsity at ``step``: ``self.sparsity(step)``.

        Per-weight targets (``weight_sparsity_map``) are not included: see
        :func:`sparsity_schedule` with ``target_sparsity=``.

        Args:
          step: the global step (an int or an int32 array, traced or not).

        Returns:
          A float32 scalar.

        Examples:
          >>> import jaxprune
          >>> float(jaxprune.Pruning().sparsity_at(50))   # TF's defaults: s(50)
          0.4375
        """
        return self.sparsity(step)

    def __repr__(self) -> str:
        defaults = get_pruning_hparams().to_dict()
        changed = ",".join(
            f"{key}={_format_value(value)}"
            for key, value in self.hparams.to_dict().items()
            if value != defaults[key]
        )
        args = [f"spec={changed!r}"]
        if self._sparsity is not None:
            args.append(f"sparsity={self._sparsity!r}")
        if self._params_filter is not None:
            args.append(f"params_filter={self._params_filter!r}")
        return f"Pruning({', '.join(args)})"

    def init(self, params: Any) -> PruningState:
        """Creates the masks (all ones) and thresholds (0) of ``params`` at step 0.

        Args:
          params: the params pytree.

        Returns:
          A fresh :class:`PruningState`.
        """
        return self._pruner.init(params)

    def mask_update(self, params: Any, state: PruningState, step: Any = None) -> PruningState:
        """Unconditionally recomputes every mask and threshold (TF's ``mask_update_op``).

        Args:
          params: the current weights.
          state: the pruning state.
          step: the global step; defaults to ``state.count``. It sets the
            sparsity and becomes ``last_update_step`` and ``count``.

        Returns:
          The new state.
        """
        step = state.count if step is None else step
        return self._mask_update(params, state, step, force=True)

    def conditional_mask_update(
        self, params: Any, state: PruningState, step: Any = None
    ) -> PruningState:
        """Updates the masks only at pruning steps (TF's ``conditional_mask_update_op``).

        A step is a pruning step iff ``begin_pruning_step <= step`` and (``step
        <= end_pruning_step`` or ``end_pruning_step == -1``) and
        ``last_update_step + pruning_frequency <= step``. Jit-safe (``lax.cond``).

        Args:
          params: the current weights.
          state: the pruning state.
          step: the global step; defaults to ``state.count``.

        Returns:
          The new state, with ``count = step``.
        """
        step = state.count if step is None else step
        return self._mask_update(params, state, step, force=False)

    def masks_transform(self) -> optax.GradientTransformationExtraArgs:
        """The optax half of the separate mask update: applies the current masks, nothing else.

        Put it last in the optax chain and call :meth:`update_masks` after each
        step (TF ran ``conditional_mask_update_op`` as a separate op after the
        train op). Its state is the same :class:`PruningState` as
        :func:`magnitude_pruning`'s, so :func:`get_pruning_state`,
        :func:`summaries`, :func:`strip_pruning`, :func:`abstract_state` and
        orbax checkpoints work unchanged. Its ``update`` returns
        ``where(mask, u, -p)`` with the state's masks (pruned weights stay
        exactly 0, kept weights get exactly ``u``) and increments ``count``
        (saturating at ``2**31 - 1``); it never recomputes masks and has no
        ``lax.cond``, so XLA fuses it into the optimizer's elementwise update.
        Without :meth:`update_masks` the masks never change.

        Returns:
          An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
          ``params``.

        Raises:
          ValueError: in ``update``, if ``params`` is missing or does not fit
            the state, naming the parameter.

        Examples:
          >>> import jax.numpy as jnp, optax, jaxprune
          >>> p = jaxprune.Pruning("pruning_frequency=1,sparsity_function_end_step=1")
          >>> tx = optax.chain(optax.sgd(1.0), p.masks_transform())
          >>> params = {"w": jnp.array([[1., -3.], [0.5, 2.]])}
          >>> opt_state = tx.init(params)
          >>> grads = {"w": jnp.zeros((2, 2))}
          >>> updates, opt_state = tx.update(grads, opt_state, params)
          >>> params = optax.apply_updates(params, updates)
          >>> params, opt_state = p.update_masks(params, opt_state)   # step 1: s(1) = 0.5
          >>> params["w"].tolist()
          [[0.0, -3.0], [0.0, 2.0]]

        References:
          Zhu & Gupta, "To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878
        """
        return transform_lib.masks_transform(self._pruner)

    def update_masks(self, params: Any, opt_state: Any) -> tuple[Any, Any]:
        """TF's ``conditional_mask_update_op`` after the train step, on params and opt_state.

        Finds the :class:`PruningState` in ``opt_state`` (anywhere, as
        :func:`get_pruning_state` does; made by :meth:`masks_transform`). At
        step ``count`` (the steps :meth:`masks_transform` has counted), if it is
        a pruning step (``begin_pruning_step <= count``, ``count <=
        end_pruning_step`` unless that is -1, and ``pruning_frequency`` steps
        since the last update), recomputes every mask and threshold from
        ``params``, the weights after the step as stored (previously pruned
        weights are 0), exactly as TF's ``mask_update_op`` on its weight
        variables, and returns params with the newly pruned weights zeroed and
        opt_state with the new state in the same place. On other steps both
        come back unchanged. Every hparams option of :func:`magnitude_pruning`
        applies. Calling it twice at one step updates once.

        The one-line chain :func:`magnitude_pruning` updates the masks at the
        same steps, to the same sparsity, but ranks ``params + updates`` before
        pruned weights are zeroed, so a previously pruned weight ranks at its
        one-step update: the masks differ only where such an update reaches the
        new threshold.

        Compiled once per params structure. Call it inside your jitted train
        step, or jit it yourself with donated buffers,
        ``jax.jit(p.update_masks, donate_argnums=(0, 1))``, so that steps that
        update nothing copy nothing (called eagerly without donation, the
        unchanged params are copied). A step that does update also checks that
        the weights pruned before are still 0, and warns naming the parameters
        if not (a transform after :meth:`masks_transform` changed them).

        Args:
          params: the weights after the step (plain arrays, linen boxes or nnx
            ``Variable`` s, e.g. ``nnx.state(model, nnx.Param)``).
          opt_state: the optimizer state holding exactly one
            :class:`PruningState` (an optax chain's state, ``nnx.state`` of an
            ``nnx.Optimizer``, ...).

        Returns:
          ``(params, opt_state)``, with the same tree structures (boxes kept).

        Raises:
          ValueError: if ``opt_state`` holds no PruningState or several (naming
            what it holds), or if params do not fit the state (naming the
            parameter).

        Examples:
          >>> import jax, jax.numpy as jnp, optax, jaxprune
          >>> p = jaxprune.Pruning("pruning_frequency=2,begin_pruning_step=2,"
          ...                      "sparsity_function_end_step=1")
          >>> tx = optax.chain(optax.sgd(0.1), p.masks_transform())
          >>> update_masks = jax.jit(p.update_masks, donate_argnums=(0, 1))
          >>> params = {"w": jnp.arange(1., 9.).reshape(2, 4)}
          >>> opt_state = tx.init(params)
          >>> for _ in range(2):
          ...     updates, opt_state = tx.update({"w": -jnp.ones((2, 4))}, opt_state, params)
          ...     params = optax.apply_updates(params, updates)
          ...     params, opt_state = update_masks(params, opt_state)
          >>> [round(x, 1) for x in params["w"].ravel().tolist()]
          [0.0, 0.0, 0.0, 0.0, 5.2, 6.2, 7.2, 8.2]
          >>> int(jaxprune.get_pruning_state(opt_state).last_update_step)
          2

        References:
          TF ``tf.contrib.model_pruning``'s ``Pruning.conditional_mask_update_op``;
          Zhu & Gupta, "To prune, or not to prune", 2017, https://arxiv.org/abs/1710.01878
        """
        return transform_lib._jitted_update_masks(
            self._static, self._pruner.constant, params, opt_state
        )

    def apply_masks(self, params: Any, state: PruningState) -> Any:
        """Masked params (TF's ``apply_mask``); see :func:`apply_masks`."""
        return state_lib.apply_masks(params, state)

    def summaries(self, state: Any) -> dict[str, jax.Array]:
        """TF's ``add_pruning_summaries``: :func:`summaries` under this spec's name."""
        return state_lib.summaries(state, name=self.hparams.name)

    def print_hparams(self) -> None:
        """Prints the hyperparameters, one per line (TF's ``print_hparams``); returns None."""
        print_hparams(self.hparams)
