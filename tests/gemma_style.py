"""A gemma-style decoder (grouped-query attention, RoPE, a gated MLP) written as gemma writes it.

google-deepmind/gemma's ``gm.nn`` modules import kauldron (which pulls tensorflow), so the
tests use this faithful rewrite of their structure instead: linen ``Einsum`` modules holding
one kernel each (``q_einsum`` ``(N, D, H)``, ``kv_einsum`` ``(2, K, D, H)``,
``attn_vec_einsum`` ``(N, H, D)``, the gating kernel ``(2, D, F)`` read as
``gate[..., 0, :]`` / ``gate[..., 1, :]``, ``linear`` ``(F, D)``), an embedding table used to
encode (a gather) and, tied, to decode, ``RMSNorm`` with ``1 + scale``, RoPE over the head
dimension with ``jnp.split`` into halves, and grouped-query attention that reshapes the
queries to ``(kv_heads, group)`` for the logits and back. The MLP's gate uses ``silu``
(SwiGLU) where gemma uses ``gelu``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

K_MASK = -2.3819763e38


class Einsum(nn.Module):
    shape: tuple[int, ...]
    weight_name: str = "w"

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param(self.weight_name, nn.initializers.normal(), self.shape)
        return jnp.einsum(eqn, x, w)


class RMSNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.zeros_init(), (x.shape[-1],))
        var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        normed = x * jax.lax.rsqrt(var + 1e-06)
        return normed * (1 + jnp.expand_dims(scale, axis=range(x.ndim - 1)))


def apply_rope(inputs, positions, base_frequency=10_000):
    """RoPE over the last axis of ``inputs`` ``[B, L, N, H]`` (gemma's ``apply_rope``)."""
    head_dim = inputs.shape[-1]
    fraction = 2 * jnp.arange(0, head_dim // 2) / head_dim
    timescale = base_frequency**fraction
    sinusoid = positions[..., jnp.newaxis] / timescale[jnp.newaxis, jnp.newaxis, :]
    sinusoid = sinusoid[..., jnp.newaxis, :]
    sin, cos = jnp.sin(sinusoid), jnp.cos(sinusoid)
    first_half, second_half = jnp.split(inputs, 2, axis=-1)
    first_part = first_half * cos - second_half * sin
    second_part = second_half * cos + first_half * sin
    return jnp.concatenate([first_part, second_part], axis=-1).astype(inputs.dtype)


class Attention(nn.Module):
    num_heads: int
    num_kv_heads: int
    features: int
    head_dim: int

    def setup(self):
        self.q_einsum = Einsum((self.num_heads, self.features, self.head_dim))
        self.kv_einsum = Einsum((2, self.num_kv_heads, self.features, self.head_dim))
        self.attn_vec_einsum = Einsum((self.num_heads, self.head_dim, self.features))

    def __call__(self, x, segment_pos, attn_mask):
        query_proj = self.q_einsum("BTD,NDH->BTNH", x)
        key_proj, value_proj = self.kv_einsum("BSD,CKDH->CBSKH", x)
        query_proj = apply_rope(query_proj, segment_pos)
        query_scaled = query_proj * self.head_dim**-0.5
        key_proj = apply_rope(key_proj, segment_pos)
        b, t, kg, h = query_scaled.shape
        query_scaled = query_scaled.reshape((b, t, self.num_kv_heads, kg // self.num_kv_heads, h))
        logits = jnp.einsum("BTKGH,BSKH->BTKGS", query_scaled, key_proj)
        b, t, k, g, s = logits.shape
        logits = logits.reshape((b, t, k * g, s))
        padded_logits = jnp.where(jnp.expand_dims(attn_mask, -2), logits, K_MASK)
        probs = jax.nn.softmax(padded_logits, axis=-1).astype(key_proj.dtype)
        b, t, kg, s = probs.shape
        probs = probs.reshape((b, t, self.num_kv_heads, kg // self.num_kv_heads, s))
        encoded = jnp.einsum("BTKGS,BSKH->BTKGH", probs, value_proj)
        b, t, k, g, h = encoded.shape
        encoded = encoded.reshape((b, t, k * g, h))
        return self.attn_vec_einsum("BTNH,NHD->BTD", encoded)


class FeedForward(nn.Module):
    features: int
    hidden_dim: int

    @nn.compact
    def __call__(self, x):
        gating = Einsum((2, self.features, self.hidden_dim), weight_name="gating_einsum")
        nn.share_scope(self, gating)
        gate = gating("...F,NFH->...NH", x)
        activations = nn.silu(gate[..., 0, :]) * gate[..., 1, :]
        linear = Einsum((self.hidden_dim, self.features), weight_name="linear")
        nn.share_scope(self, linear)
        return linear("...H,HF->...F", activations)


class Block(nn.Module):
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    head_dim: int
    hidden_dim: int

    def setup(self):
        self.pre_attention_norm = RMSNorm()
        self.attn = Attention(self.num_heads, self.num_kv_heads, self.embed_dim, self.head_dim)
        self.pre_ffw_norm = RMSNorm()
        self.mlp = FeedForward(self.embed_dim, self.hidden_dim)

    def __call__(self, x, segment_pos, attn_mask):
        x = x + self.attn(self.pre_attention_norm(x), segment_pos, attn_mask)
        return x + self.mlp(self.pre_ffw_norm(x))


class Transformer(nn.Module):
    """Tokens ``[B, L]`` -> logits ``[B, L, vocab]`` (causal)."""

    vocab_size: int = 32
    embed_dim: int = 16
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 8
    hidden_dim: int = 24

    def setup(self):
        self.input_embedding = self.param(
            "input_embedding", nn.initializers.normal(), (self.vocab_size, self.embed_dim)
        )
        self.blocks = [
            Block(self.num_heads, self.num_kv_heads, self.embed_dim, self.head_dim, self.hidden_dim)
            for _ in range(self.num_layers)
        ]
        self.final_norm = RMSNorm()

    def __call__(self, tokens):
        x = self.input_embedding[(tokens,)] * jnp.sqrt(self.embed_dim).astype(jnp.float32)
        length = tokens.shape[1]
        positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
        mask = jnp.tril(jnp.ones((length, length), bool))[None]
        for block in self.blocks:
            x = block(x, positions, mask)
        return jnp.dot(self.final_norm(x), self.input_embedding.T)
