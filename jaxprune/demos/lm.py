"""A small byte-level causal transformer LM, its offline corpus, its training and perplexity.

The language model of ``jaxprune demo-wanda`` and of the Wanda tests. Everything here needs
Flax (``pip install "jaxprune[examples]"``).

* Corpus: Python's own standard-library sources, which ship with every CPython: a fixed list of
  large modules read from ``os.path.dirname(os.__file__)`` (nothing is downloaded). Each file
  is split by position: its first 90 % (cut at a line boundary) goes to the training split,
  the rest to the held-out split. Text is modelled as bytes (vocabulary 256).
* Model (:class:`TransformerLM`): learned token and position embeddings, pre-norm blocks of
  causal multi-head self-attention (``query``, ``key``, ``value``, ``out`` projections) and an
  MLP (by default LLaMA's: RMSNorm and a SwiGLU MLP ``down(silu(gate(x)) * up(x))``), a final
  norm and an untied LM head. The linear layers of the blocks have no biases (as in LLaMA,
  Wanda's models); their kernels are ``(in, out)``.
* Held-out loss (:func:`mean_nll`): the mean next-byte negative log-likelihood (nats) over
  non-overlapping windows of the held-out split; the perplexity is ``exp`` of it (per byte).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

#: The corpus: large standard-library modules that are single files in CPython 3.11 to 3.14.
CORPUS_FILES = (
    "argparse.py",
    "typing.py",
    "inspect.py",
    "dataclasses.py",
    "subprocess.py",
    "tarfile.py",
    "difflib.py",
    "enum.py",
    "pickle.py",
    "threading.py",
    "shutil.py",
    "ast.py",
    "configparser.py",
    "doctest.py",
    "mailbox.py",
    "pydoc.py",
    "ipaddress.py",
    "optparse.py",
    "locale.py",
    "smtplib.py",
    "imaplib.py",
    "logging/__init__.py",
    "collections/__init__.py",
    "email/message.py",
    "http/client.py",
    "urllib/request.py",
    "unittest/mock.py",
    "asyncio/base_events.py",
)
#: Fraction of every file (its end) that goes to the held-out split.
HELDOUT_FRACTION = 0.1
#: Size of the byte vocabulary.
VOCAB_SIZE = 256
_ACTIVATIONS = {"gelu": nnx.gelu, "relu": nnx.relu, "swiglu": nnx.silu}
_NORMS = {"layer": nnx.LayerNorm, "rms": nnx.RMSNorm}


# -- corpus ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The byte corpus, split into training and held-out text.

    Attributes:
      train: the training bytes, ``uint8`` (the first part of every file, concatenated).
      heldout: the held-out bytes, ``uint8`` (the last part of every file, concatenated).
      files: the files read (relative to the standard-library directory).
      digest: SHA-256 of the files' contents, in order (identifies the corpus).
    """

    train: np.ndarray
    heldout: np.ndarray
    files: tuple[str, ...]
    digest: str


def stdlib_dir() -> str:
    """The directory of the running CPython's standard-library sources."""
    return os.path.dirname(os.__file__)


def load_corpus(
    files: Sequence[str] = CORPUS_FILES, heldout_fraction: float = HELDOUT_FRACTION
) -> Corpus:
    """Reads the standard-library files and splits each by position into train and held-out.

    Every file's last ``heldout_fraction`` (from the first line start at or after that point)
    is held out; the rest is for training. Files missing from this Python are skipped; at
    least half of them must be present.

    Args:
      files: paths relative to :func:`stdlib_dir`.
      heldout_fraction: the held-out fraction of every file, in ``(0, 1)``.

    Returns:
      The :class:`Corpus`.

    Raises:
      ValueError: for a bad ``heldout_fraction``, or when fewer than half of the files exist
        (e.g. a Python installed without its ``.py`` sources).
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    root = stdlib_dir()
    found, train, heldout = [], [], []
    digest = hashlib.sha256()
    for name in files:
        path = os.path.join(root, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        digest.update(name.encode() + b"\0" + data)
        cut = data.find(b"\n", int(len(data) * (1.0 - heldout_fraction)))
        cut = len(data) if cut < 0 else cut + 1
        train.append(np.frombuffer(data[:cut], np.uint8))
        heldout.append(np.frombuffer(data[cut:], np.uint8))
        found.append(name)
    if len(found) * 2 < len(files):
        raise ValueError(
            f"the corpus needs the standard-library sources in {root!r}: only {len(found)} of "
            f"{len(files)} files found ({', '.join(files[:3])}, ...)"
        )
    return Corpus(
        train=np.concatenate(train),
        heldout=np.concatenate(heldout),
        files=tuple(found),
        digest=digest.hexdigest(),
    )


def windows(data: np.ndarray, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping evaluation windows of ``seq_len + 1`` bytes that tile ``data``.

    Window ``i`` is ``data[i * seq_len : (i + 1) * seq_len + 1]``: its first ``seq_len`` bytes
    are the input, its last ``seq_len`` the targets, so every byte of ``data`` but the first
    (and a tail shorter than a window) is predicted exactly once.

    Args:
      data: ``uint8`` bytes.
      seq_len: the model's context length.
      max_windows: if given and smaller than the number of windows, keep this many, evenly
        spaced over ``data`` (deterministic).

    Returns:
      ``(n, seq_len + 1)`` int32 tokens.

    Examples:
      >>> import numpy as np
      >>> from jaxprune.demos.lm import windows
      >>> windows(np.arange(10, dtype=np.uint8), 3).tolist()
      [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    """
    n = (len(data) - 1) // seq_len
    if n < 1:
        raise ValueError(f"need more than {seq_len} bytes for one window, got {len(data)}")
    starts = np.arange(n) * seq_len
    if max_windows is not None and max_windows < n:
        starts = starts[np.unique(np.linspace(0, n - 1, max_windows).round().astype(int))]
    return np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int32)


def random_windows(
    data: np.ndarray, seq_len: int, batch_size: int, num_batches: int, seed: int
) -> Iterator[np.ndarray]:
    """Batches of windows of ``seq_len + 1`` bytes at random offsets (seeded), for training.

    Args:
      data: ``uint8`` bytes.
      seq_len: the model's context length.
      batch_size: windows per batch.
      num_batches: how many batches.
      seed: NumPy seed of the offsets.

    Yields:
      ``(batch_size, seq_len + 1)`` int32 batches.
    """
    rng = np.random.default_rng(seed)
    offsets = np.arange(seq_len + 1)
    for _ in range(num_batches):
        starts = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
        yield data[starts[:, None] + offsets].astype(np.int32)


# -- model ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """The shape of the language model.

    Attributes:
      d_model: width of the residual stream.
      n_layers: number of transformer blocks.
      n_heads: attention heads (``d_model`` must be a multiple).
      d_ff: hidden width of the MLP.
      seq_len: context length (learned positions).
      activation: the MLP: ``"swiglu"`` (gated, ``down(silu(gate(x)) * up(x))``, as in
        LLaMA), ``"gelu"`` or ``"relu"`` (``down(act(up(x)))``).
      norm: ``"rms"`` (RMSNorm, as in LLaMA) or ``"layer"`` (LayerNorm).
    """

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 384
    seq_len: int = 128
    activation: str = "swiglu"
    norm: str = "rms"

    def __post_init__(self):
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"LMConfig.activation must be one of {sorted(_ACTIVATIONS)}, got "
                f"{self.activation!r}"
            )
        if self.norm not in _NORMS:
            raise ValueError(f"LMConfig.norm must be one of {sorted(_NORMS)}, got {self.norm!r}")
        for field in dataclasses.fields(self):
            if field.name in ("activation", "norm"):
                continue
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LMConfig.{field.name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"LMConfig.d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads})"
            )


class CausalSelfAttention(nnx.Module):
    """Causal multi-head self-attention with ``query``, ``key``, ``value`` and ``out`` projections.

    Args:
      d_model: width of the residual stream.
      n_heads: number of heads.
      rngs: Flax random streams for initialisation.
    """

    def __init__(self, d_model: int, n_heads: int, *, rngs: nnx.Rngs):
        self.n_heads = n_heads
        linear = functools.partial(nnx.Linear, d_model, d_model, use_bias=False, rngs=rngs)
        self.query, self.key, self.value, self.out = linear(), linear(), linear(), linear()

    def __call__(self, x: jax.Array) -> jax.Array:
        """Attends every position to itself and the positions before it.

        Args:
          x: ``(batch, length, d_model)`` activations.

        Returns:
          ``(batch, length, d_model)``.
        """
        b, t, d = x.shape
        h = self.n_heads

        def heads(y):
            return y.reshape(b, t, h, d // h)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // h)
        causal = jnp.tril(jnp.ones((t, t), bool))
        logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d))


class MLP(nnx.Module):
    """The block's MLP: ``down(silu(gate(x)) * up(x))`` (SwiGLU) or ``down(act(up(x)))``.

    Args:
      d_model: width of the residual stream.
      d_ff: hidden width.
      activation: ``"swiglu"``, ``"gelu"`` or ``"relu"``.
      rngs: Flax random streams for initialisation.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "swiglu", *, rngs: nnx.Rngs):
        self.activation = activation
        if activation == "swiglu":
            self.gate = nnx.Linear(d_model, d_ff, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(d_model, d_ff, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(d_ff, d_model, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the MLP to ``(..., d_model)`` activations."""
        if self.activation == "swiglu":
            return self.down(nnx.silu(self.gate(x)) * self.up(x))
        return self.down(_ACTIVATIONS[self.activation](self.up(x)))


class Block(nnx.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
      config: the model shape.
      rngs: Flax random streams for initialisation.
    """

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.norm1 = _NORMS[config.norm](config.d_model, rngs=rngs)
        self.attn = CausalSelfAttention(config.d_model, config.n_heads, rngs=rngs)
        self.norm2 = _NORMS[config.norm](config.d_model, rngs=rngs)
        self.mlp = MLP(config.d_model, config.d_ff, config.activation, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to ``(batch, length, d_model)`` activations."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerLM(nnx.Module):
    """A byte-level causal transformer language model (vocabulary 256).

    Parameters (``nnx.to_pure_dict`` names): ``embed/embedding`` (256, d), ``pos/embedding``
    (seq_len, d), per block ``blocks/{i}/attn/{query,key,value,out}/kernel`` (d, d),
    ``blocks/{i}/mlp/{gate,up}/kernel`` (d, d_ff) (``gate`` with SwiGLU only),
    ``blocks/{i}/mlp/down/kernel`` (d_ff, d) and the norm scales (and LayerNorm biases),
    ``norm/...`` and ``head/kernel`` (d, 256).

    Args:
      config: the model shape.
      rngs: Flax random streams for initialisation.
    """

    def __init__(self, config: LMConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(VOCAB_SIZE, config.d_model, rngs=rngs)
        self.pos = nnx.Embed(config.seq_len, config.d_model, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layers)])
        self.norm = _NORMS[config.norm](config.d_model, rngs=rngs)
        self.head = nnx.Linear(config.d_model, VOCAB_SIZE, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """Returns the next-byte logits.

        Args:
          tokens: ``(batch, length)`` integer bytes, ``length <= seq_len``.

        Returns:
          ``(batch, length, 256)`` float32 logits; position ``t`` predicts byte ``t + 1``.
        """
        x = self.embed(tokens) + self.pos(jnp.arange(tokens.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def init_lm(config: LMConfig, seed: int) -> tuple[Any, dict[str, Any]]:
    """Initialises the model.

    Args:
      config: the model shape.
      seed: the initialisation seed.

    Returns:
      ``(graphdef, params)``: the Flax graph definition and the parameters as a pure dict.
    """
    graphdef, state = nnx.split(TransformerLM(config, rngs=nnx.Rngs(seed)))
    return graphdef, nnx.to_pure_dict(state)


def make_apply(graphdef: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """The model as a pure function ``apply(params, tokens) -> logits`` of a pure-dict params."""

    def apply(params: Any, tokens: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(tokens)

    return apply


def is_block_linear(name: str, leaf: Any = None) -> bool:
    """The ``params_filter`` of the Wanda demo: the linear kernels of the transformer blocks.

    The embeddings and the LM head stay dense, as in the Wanda paper.

    Args:
      name: the parameter's ``/``-joined name.
      leaf: the parameter (unused).

    Returns:
      Whether ``name`` is a block's linear kernel.

    Examples:
      >>> from jaxprune.demos.lm import is_block_linear
      >>> is_block_linear("blocks/0/mlp/up/kernel"), is_block_linear("head/kernel")
      (True, False)
    """
    del leaf
    return name.startswith("blocks/") and name.endswith("/kernel")


# -- loss, evaluation and training ----------------------------------------------------------------


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood (nats) of ``targets`` under ``logits``.

    Args:
      logits: ``(..., vocab)``.
      targets: ``(...)`` integer tokens.

    Returns:
      ``(...)`` float32 NLL.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def _nll_sum(apply, params, batch, weights):
    nll = token_nll(apply(params, batch[:, :-1]), batch[:, 1:])
    return jnp.sum(nll * weights[:, None]), jnp.sum(weights) * nll.shape[1]


_nll_sum_jit = jax.jit(_nll_sum, static_argnums=0)


def mean_nll(
    apply: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    tokens: np.ndarray,
    batch_size: int = 64,
) -> float:
    """Mean next-token NLL (nats) over all targets of ``tokens`` (windows from :func:`windows`).

    Every window's last ``L - 1`` tokens are predicted from the ones before; the mean is over
    all predicted tokens of all windows (a last, partial batch is padded and the padding
    weighted 0). The perplexity is ``exp`` of the result.

    Args:
      apply: ``apply(params, tokens) -> logits`` (e.g. :func:`make_apply`); a stable function
        object, so that repeated calls reuse the compiled step.
      params: the parameters.
      tokens: ``(n, L)`` integer windows.
      batch_size: windows per evaluation batch.

    Returns:
      The mean NLL as a Python float.
    """
    tokens = np.asarray(tokens, np.int32)
    total, count = 0.0, 0.0
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i : i + batch_size]
        weights = np.ones(batch_size, np.float32)
        if len(batch) < batch_size:
            weights[len(batch) :] = 0.0
            batch = np.concatenate([batch, np.zeros_like(tokens[: batch_size - len(batch)])])
        s, c = _nll_sum_jit(apply, params, batch, weights)
        total += float(s)
        count += float(c)
    return total / count


def perplexity(mean_nll_value: float) -> float:
    """``exp(mean NLL)``: the perplexity (per byte, for this byte-level model)."""
    return math.exp(mean_nll_value)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the language model is trained.

    Attributes:
      steps: optimizer steps.
      batch_size: windows of ``seq_len + 1`` bytes per step (random offsets in the train split).
      learning_rate: peak AdamW learning rate (linear warm-up over 5 % of the steps, cosine
        decay to 10 %).
      weight_decay: AdamW weight decay.
      seed: seed of the initialisation and of the batches.
    """

    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW with warm-up and cosine decay, and gradient clipping at global norm 1."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=max(1, config.steps // 20),
        decay_steps=config.steps,
        end_value=config.learning_rate / 10,
    )
    return optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay)
    )


def train_lm(
    model_config: LMConfig,
    train_config: TrainConfig,
    train_data: np.ndarray,
    *,
    progress: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[Any, dict[str, Any], list[float]]:
    """Trains the language model on random windows of ``train_data``.

    Args:
      model_config: the model shape.
      train_config: steps, batch size, learning rate, seed.
      train_data: the training bytes.
      progress: show a tqdm progress bar.
      callback: called as ``callback(step, loss)`` every 50 steps (e.g. for logging).

    Returns:
      ``(graphdef, params, losses)``: the trained parameters (pure dict) and the training loss
      of every step.
    """
    graphdef, params = init_lm(model_config, train_config.seed)
    apply = make_apply(graphdef)
    tx = make_optimizer(train_config)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            return jnp.mean(token_nll(apply(p, batch[:, :-1]), batch[:, 1:]))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    batches = random_windows(
        train_data,
        model_config.seq_len,
        train_config.batch_size,
        train_config.steps,
        train_config.seed,
    )
    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=train_config.steps, desc="train", dynamic_ncols=True, mininterval=0.5)
    for i, batch in enumerate(batches, start=1):
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(loss)
        if i % 50 == 0 or i == train_config.steps:
            value = float(loss)
            if bar is not None:
                bar.set_postfix(loss=f"{value:.3f}")
            if callback is not None:
                callback(i, value)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return graphdef, params, [float(x) for x in jax.device_get(losses)]


__all__: Sequence[str] = (
    "CORPUS_FILES",
    "Corpus",
    "LMConfig",
    "TrainConfig",
    "TransformerLM",
    "init_lm",
    "is_block_linear",
    "load_corpus",
    "make_apply",
    "mean_nll",
    "perplexity",
    "random_windows",
    "token_nll",
    "train_lm",
    "windows",
)
