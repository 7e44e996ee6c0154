"""The MTP head (docs/MODEL.md §8) against an independent fp32 reference written here from the formula, with
plain torch ops and the weights read straight from the safetensors files (no import of our layers or ops;
only the rotary inverse frequencies are ours, and they have their own transformers parity test).

transformers does not run the MTP head, so this reference is the oracle: vLLM's
`Qwen3_5MultiTokenPredictor` written out. Checked: a prefill-style pass over a whole prompt, chained steps
that feed the head's output back and read the K/V the prefill wrote, and two sequences of different lengths
packed in one batch; dense and MoE. The MTP weights of the random checkpoints are redrawn with O(1)
activations (the writer's std 0.02 leaves the attention and MLP branches small next to the residual), and
`test_the_reference_can_fail` shows the comparison notices a swapped concat order, a norm without its `1 +`,
a missing output gate, an interleaved rotary, a non-causal attention, a dropped hidden, or chained steps that
do not attend over the prefill's K/V.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from qwen35.config import ModelConfig
from qwen35.loading.checkpoint import load_model
from qwen35.model.rope import inv_frequencies
from tests.model.helpers import amplify_mtp, draft_chain

TOL = 1e-4  # fp32; measured max |diff| 1.7e-6 to 2.9e-6 on h' of RMS ~1.04 (summation order only)
WRONG = 0.1  # every mutated reference misses ours by more than this (measured 1.2 to 6.4)
INDEX = "model.safetensors.index.json"


# -- the checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["tiny", "tiny-moe"])
def setup(request, tmp_path_factory):
    """(our fp32 model loaded with its MTP head, fused and prepacked as served; the reference)."""
    src = request.getfixturevalue("tiny_ckpt" if request.param == "tiny" else "tiny_moe_ckpt")
    path = tmp_path_factory.mktemp(f"mtp_{request.param}") / "ckpt"
    shutil.copytree(src, path)
    amplify_mtp(path, seed=7)
    model, cfg = load_model(path, dtype=torch.float32, mtp=True)
    return model, Reference(path, cfg)


# -- the reference -------------------------------------------------------------------------------------

def rms1p(x: torch.Tensor, w: torch.Tensor, eps: float, one: bool = True) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * (1 + w), in fp32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * ((1 + w) if one else w)


class Reference:
    """One MTP step per call and per sequence, K/V kept per (sequence, position)."""

    def __init__(self, path, cfg: ModelConfig, **mutations: bool) -> None:
        self.cfg = t = cfg.text
        self.w: dict[str, torch.Tensor] = {}
        for shard in sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values())):
            for key, value in load_file(str(path / shard)).items():
                if key.startswith(("mtp.", "lm_head.", "model.language_model.embed_tokens.")):
                    self.w[key] = value.float()
        self.embed = self.w["model.language_model.embed_tokens.weight"]
        self.lm_head = self.embed if t.tie_word_embeddings else self.w["lm_head.weight"]
        self.inv_freq, self.mscale = inv_frequencies(t.rope, t.rotary_dim, t.max_position_embeddings)
        self.kv: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.mut = mutations

    def mutated(self, **mutations: bool) -> "Reference":
        other = object.__new__(Reference)
        other.__dict__.update(self.__dict__, kv={}, mut=mutations)
        return other

    def norm(self, x: torch.Tensor, name: str, one: bool = True) -> torch.Tensor:
        return rms1p(x, self.w[name], self.cfg.rms_norm_eps, one and not self.mut.get("norm_without_one"))

    def lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.w[name + ".weight"].T

    def rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [n, heads, d]: dims j and j + r/2 (j < r/2) rotate by pos * inv_freq[j]; dims >= r pass."""
        half = self.inv_freq.numel()
        r = 2 * half
        angle = pos.float()[:, None] * self.inv_freq  # [n, r/2]
        cos, sin = (angle.cos() * self.mscale)[:, None], (angle.sin() * self.mscale)[:, None]
        if self.mut.get("rope_interleaved"):  # pairs (2j, 2j + 1) instead
            a, b = x[..., 0:r:2], x[..., 1:r:2]
            rot = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)
            return torch.cat([rot, x[..., r:]], -1)
        a, b = x[..., :half], x[..., half:r]
        return torch.cat([a * cos - b * sin, b * cos + a * sin, x[..., r:]], -1)

    def swiglu(self, x: torch.Tensor, p: str) -> torch.Tensor:
        return self.lin(F.silu(self.lin(x, p + "gate_proj")) * self.lin(x, p + "up_proj"), p + "down_proj")

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        p, t = "mtp.layers.0.mlp.", self.cfg
        if not t.is_moe:
            return self.swiglu(x, p)
        probs = torch.softmax(self.lin(x, p + "gate"), -1)
        top, ids = probs.topk(t.num_experts_per_tok, -1)
        top = top / top.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for n in range(x.shape[0]):
            for weight, e in zip(top[n], ids[n].tolist()):
                out[n] += weight * self.swiglu(x[n:n + 1], f"{p}experts.{e}.")[0]
        return out + torch.sigmoid(self.lin(x, p + "shared_expert_gate")) * self.swiglu(x, p + "shared_expert.")

    def attention(self, u: torch.Tensor, seq: int, pos: torch.Tensor) -> torch.Tensor:
        t, p = self.cfg, "mtp.layers.0.self_attn."
        n, nq, nkv, d = u.shape[0], t.num_attention_heads, t.num_key_value_heads, t.head_dim
        qg = self.lin(u, p + "q_proj").view(n, nq, 2 * d)
        q, gate = qg[..., :d], qg[..., d:]  # per head: d query rows, then d gate rows
        k, v = self.lin(u, p + "k_proj").view(n, nkv, d), self.lin(u, p + "v_proj").view(n, nkv, d)
        q = self.rope(self.norm(q, p + "q_norm.weight"), pos)
        k = self.rope(self.norm(k, p + "k_norm.weight"), pos)
        for r in range(n):
            self.kv[seq, int(pos[r])] = k[r], v[r]
        out = torch.empty(n, nq, d)
        for r in range(n):
            last = int(pos[r]) if not self.mut.get("not_causal") else max(self.k_positions(seq))
            seen = [self.kv[seq, j] for j in range(last + 1) if (seq, j) in self.kv]  # all, unless mutated
            keys, vals = torch.stack([kv[0] for kv in seen]), torch.stack([kv[1] for kv in seen])  # [L, nkv, d]
            for h in range(nq):
                g = h // (nq // nkv)  # GQA: consecutive query heads share a K/V head
                a = torch.softmax(keys[:, g] @ q[r, h] * d ** -0.5, 0)
                out[r, h] = a @ vals[:, g]
        if not self.mut.get("no_output_gate"):
            out = out * torch.sigmoid(gate)
        return self.lin(out.reshape(n, nq * d), p + "o_proj")

    def k_positions(self, seq: int) -> list[int]:
        return [j for s, j in self.kv if s == seq]

    @torch.no_grad()
    def step(self, seq: int, tokens: list[int], hidden: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """Rows of one sequence: tokens[r] is the token after the row's hidden; returns h' [n, H]."""
        pos = torch.tensor(positions)
        if self.mut.get("no_hidden"):
            hidden = torch.zeros_like(hidden)
        e = self.norm(self.embed[tokens], "mtp.pre_fc_norm_embedding.weight")
        hh = self.norm(hidden, "mtp.pre_fc_norm_hidden.weight")
        x = self.lin(torch.cat([hh, e] if self.mut.get("swap_concat") else [e, hh], -1), "mtp.fc")
        x = x + self.attention(self.norm(x, "mtp.layers.0.input_layernorm.weight"), seq, pos)
        x = x + self.ffn(self.norm(x, "mtp.layers.0.post_attention_layernorm.weight"))
        return self.norm(x, "mtp.norm.weight")

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.lm_head.T

    def chain(self, prompts: list[list[int]], chain_tokens: list[list[int]],
              hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """What `draft_chain` computes, sequence by sequence, given the main model's hidden states."""
        out = []
        for b, (p, extra) in enumerate(zip(prompts, chain_tokens)):
            rows = [self.step(b, p[1:], hidden[b][:-1].float(), list(range(len(p) - 1)))]
            if self.mut.get("chain_forgets_prefill"):
                self.kv = {key: kv for key, kv in self.kv.items() if key[0] != b}
            for k, tok in enumerate(extra):
                rows.append(self.step(b, [tok], rows[-1][-1:], [len(p) - 1 + k]))
            out.append(torch.cat(rows))
        return out


# -- the tests -----------------------------------------------------------------------------------------

def _prompts(vocab: int, lengths: tuple[int, ...], steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
    return prompts, [torch.randint(0, vocab, (steps,), generator=gen).tolist() for _ in lengths]


def _check(model, ref: Reference, prompts, chain_tokens) -> None:
    hidden, ours = draft_chain(model, prompts, chain_tokens)
    want = ref.chain(prompts, chain_tokens, hidden)
    for got, exp in zip(ours, want):
        assert got.shape == exp.shape
        assert exp.pow(2).mean().sqrt() > 0.5  # the test is not comparing near-zeros
        assert (got - exp).abs().max().item() < TOL
        assert (model.logits(got) - ref.logits(exp)).abs().max().item() < TOL


def test_prefill_then_chained_steps(setup):
    """(a) every row of a 40-token prompt, then (b) four chained steps at positions 39..42 that read (a)'s K/V."""
    model, ref = setup
    prompts, chain = _prompts(model.cfg.vocab_size, (40,), steps=4, seed=0)
    _check(model, ref.mutated(), prompts, chain)


def test_two_sequences_packed(setup):
    """(c) sequences of 37 and 12 tokens packed in one batch, for the prefill pass and for three chained steps
    (each step one row per sequence, at different positions)."""
    model, ref = setup
    prompts, chain = _prompts(model.cfg.vocab_size, (37, 12), steps=3, seed=1)
    _check(model, ref.mutated(), prompts, chain)


@pytest.mark.parametrize("mutation", ["swap_concat", "norm_without_one", "no_output_gate", "rope_interleaved",
                                      "not_causal", "no_hidden", "chain_forgets_prefill"])
def test_the_reference_can_fail(setup, mutation):
    """A reference with one deliberate mistake misses ours by far more than the tolerance."""
    model, ref = setup
    prompts, chain = _prompts(model.cfg.vocab_size, (40, 9), steps=2, seed=3)
    hidden, ours = draft_chain(model, prompts, chain)
    wrong = ref.mutated(**{mutation: True}).chain(prompts, chain, hidden)
    diff = max((got - exp).abs().max().item() for got, exp in zip(ours, wrong))
    assert diff > WRONG, f"{mutation}: {diff}"
