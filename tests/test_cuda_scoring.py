"""Fast catalog scoring gives the plain path's log-probabilities (CPU, fp32)."""

from __future__ import annotations

import numpy as np
import torch

from radproto.model import fast_train
from radproto.model.fast_scoring import FastScorer, TriePlan, build_inputs
from radproto.model.scoring import ProtocolTrie, naive_log_probs, trie_log_probs


def tiny_llama(seed: int = 0):
    """A 2-layer Llama with widened random weights (fp32): the check is not on ~zero."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                         max_position_embeddings=256, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(7)
    lora = get_peft_model(model, LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                        "down_proj"]))
    with torch.no_grad():  # B starts at zero; make the adapter matter
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return lora


TARGETS = [[5, 6, 7, 2], [5, 6, 8, 2], [5, 9, 2], [11, 2], [11, 12, 13, 14, 2]]


def prompts(seed: int, n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (int(torch.randint(1, 25, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(n)]


def test_fast_scores_equal_plain_and_naive():
    model = with_lora(tiny_llama(21)).eval()
    trie = ProtocolTrie.build(TARGETS)
    batch = prompts(22, 7)
    fast = FastScorer(model, trie, pad_token_id=0, max_batch_tokens=60).log_probs(batch)
    with torch.inference_mode():  # as the classifier calls it
        plain = trie_log_probs(model, batch, trie, pad_token_id=0)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5)
    for row, prompt in enumerate(batch[:3]):
        np.testing.assert_allclose(fast[row], naive_log_probs(model, prompt, TARGETS),
                                   rtol=1e-5, atol=1e-5)


def test_batches_follow_budget_and_keep_input_order():
    trie = ProtocolTrie.build(TARGETS)
    scorer = FastScorer(None, trie, pad_token_id=0, max_batch_tokens=40, max_batch=3)
    lengths = [3, 10, 1, 7, 7, 2]
    groups = scorer.batches(lengths)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        width = max(lengths[i] for i in group)
        assert len(group) <= 3
        assert len(group) == 1 or len(group) * (width + trie.n_nodes) <= 40


def test_mask_matches_plain_layout():
    trie = ProtocolTrie.build(TARGETS)
    plan = TriePlan.build(trie, torch.device("cpu"), torch.float32)
    ids = torch.tensor([[4, 4, 4], [4, 0, 0]])
    lengths = torch.tensor([3, 1])
    _, positions, mask = build_inputs(plan, ids, lengths, 3)
    assert mask.shape == (2, 1, 3 + trie.n_nodes, 3 + trie.n_nodes)
    assert positions[1, 3:].tolist() == (1 + trie.node_depth - 1).tolist()
    # nodes of order 1 see its one real prompt token, never its padding
    assert mask[1, 0, 3:, 0].all() and not mask[1, 0, 3:, 1:3].any()
    # every row sees something (no empty softmax row)
    assert mask.any(-1).all()


def test_lean_lora_scoring_equals_peft_scoring_and_is_undone():
    model = with_lora(tiny_llama(23)).eval()
    trie = ProtocolTrie.build(TARGETS)
    batch = prompts(24, 4)
    with torch.inference_mode():
        plain = trie_log_probs(model, batch, trie, pad_token_id=0)
    assert fast_train.lean_lora(model) > 0
    lean = FastScorer(model, trie, pad_token_id=0).log_probs(batch)
    np.testing.assert_allclose(lean, plain, rtol=1e-5, atol=1e-5)
    assert fast_train.plain_lora(model) == fast_train.lean_lora(model)


def test_every_path_applies_the_models_logit_softcap():
    """Gemma 2 caps its final logits in its forward pass; the scorers read the head
    themselves, so each must cap too (one shared helper does)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from radproto.model.bounded_scoring import BoundedScorer

    torch.manual_seed(0)
    config = Gemma2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          vocab_size=97, max_position_embeddings=256,
                          final_logit_softcapping=3.0, attn_logit_softcapping=None,
                          sliding_window=128, attn_implementation="sdpa")
    model = Gemma2ForCausalLM(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    trie = ProtocolTrie.build(TARGETS)
    batch = prompts(3, 6)
    naive = np.stack([naive_log_probs(model, p, TARGETS) for p in batch])
    assert np.abs(naive).mean() > 5  # capped logits, far from a uniform guess
    np.testing.assert_allclose(trie_log_probs(model, batch, trie, pad_token_id=0), naive,
                               atol=1e-4)
    np.testing.assert_allclose(FastScorer(model, trie, 0).log_probs(batch), naive, atol=1e-4)
    bounded = BoundedScorer(model, trie, 0, tolerance=0.0).log_probs(batch)
    np.testing.assert_allclose(bounded, naive, atol=1e-4)
