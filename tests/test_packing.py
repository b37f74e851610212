"""Packed training rows give what the padded batch gives (CPU, fp32): the layout, the head
loss and its gradients, lean LoRA, and attention that stays inside each example."""

from __future__ import annotations

import copy

import pytest
import torch
from test_train_support import wide_llama, with_lora

from radproto.model import kernels
from radproto.model.catalog import default_catalog
from radproto.model.head import new_head
from radproto.training.model_setup import head_loss_module, prepare_packed
from radproto.training.packing import pack_examples, pad_examples

N_PROTOCOLS = 12


def examples(seed: int = 1, n: int = 5, *, vocab: int = 200) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, 24, (1,), generator=g))
        out.append({"input_ids": torch.randint(3, vocab, (length,), generator=g).tolist(),
                    "label": int(torch.randint(0, N_PROTOCOLS, (1,), generator=g))})
    return out


def setup(seed: int, *, lora: bool = True):
    """(model, head, pad token id): a widened tiny Llama, LoRA, a head of 12 protocols."""
    model, tokenizer = wide_llama(seed)
    if lora:
        model = with_lora(model)
    head = new_head(model, tokenizer, default_catalog().names[:N_PROTOCOLS])
    return model, head, tokenizer.pad_token_id


def padded(module, batch, pad):
    return module(**pad_examples(batch, pad))


def packed(module, batch):
    row = pack_examples(batch)
    return module(input_ids=row.input_ids, labels=row.labels, position_ids=row.position_ids,
                  cu_seqlens=row.cu_seqlens, max_seqlen=row.max_seqlen)


def varlen(model) -> None:
    kernels.register_varlen_attention()
    kernels.set_attention(model, kernels.VARLEN_ATTENTION)


def test_pack_and_pad_layout():
    batch = [{"input_ids": [5, 6, 7], "label": 3}, {"input_ids": [8, 9], "label": 0}]
    row = pack_examples(batch)
    assert row.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert row.position_ids.tolist() == [[0, 1, 2, 0, 1]]  # positions restart per example
    assert row.cu_seqlens.tolist() == [0, 3, 5]
    assert row.cu_seqlens.dtype == torch.int32
    assert row.labels.tolist() == [3, 0]
    assert (row.max_seqlen, row.n_tokens) == (3, 5)
    moved = row.to("cpu")
    assert moved.labels.tolist() == [3, 0] and moved.max_seqlen == 3
    with pytest.raises(ValueError):
        pack_examples([])
    with pytest.raises(ValueError):
        pack_examples([{"input_ids": [], "label": 0}])

    pad = pad_examples(batch, pad_token_id=2)
    assert pad["input_ids"].tolist() == [[5, 6, 7], [8, 9, 2]]  # right-padded
    assert pad["lengths"].tolist() == [3, 2]
    assert pad["labels"].tolist() == [3, 0]


def test_packed_head_loss_equals_padded_head_loss():
    model, head, pad = setup(3)
    batch = examples(4, 6)
    module = head_loss_module(model, head)
    with torch.no_grad():
        want_loss, want_logits = padded(module, batch, pad)
        varlen(model)
        got_loss, got_logits = packed(module, batch)
    assert want_logits.shape == (6, N_PROTOCOLS)
    assert want_logits.std() > 0.1  # the rows differ: not a check on near-equal numbers
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    labels = torch.tensor([e["label"] for e in batch])
    torch.testing.assert_close(want_loss, torch.nn.functional.cross_entropy(want_logits, labels))


def test_label_smoothing_reaches_the_loss():
    model, head, pad = setup(5, lora=False)
    batch = examples(6, 4)
    with torch.no_grad():
        plain, logits = padded(head_loss_module(model, head), batch, pad)
        smooth, _ = padded(head_loss_module(model, head, label_smoothing=0.3), batch, pad)
    labels = torch.tensor([e["label"] for e in batch])
    want = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.3)
    torch.testing.assert_close(smooth, want)
    assert abs(float(smooth - plain)) > 1e-3


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lean_lora_gradients_match_peft(checkpointing: bool):
    plain, head, pad = setup(7)
    lean, lean_head = copy.deepcopy(plain), copy.deepcopy(head)
    batch = examples(8, 4)
    previous = prepare_packed(lean, torch.float32)
    assert previous == "sdpa"
    assert kernels.lean_lora(lean) == 0  # prepare_packed patched every layer already
    if checkpointing:
        lean.get_base_model().gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    plain.train()
    lean.train()
    want, _ = padded(head_loss_module(plain, head), batch, pad)
    want.backward()
    got, _ = packed(head_loss_module(lean, lean_head), batch)
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    checked = 0
    for name, p in lean.named_parameters():
        if p.requires_grad:
            assert grads[name] is not None and grads[name].abs().max() > 0, name
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)
            checked += 1
    assert checked == len(grads) > 0
    torch.testing.assert_close(lean_head.weight.grad, head.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lean_head.bias.grad, head.bias.grad, rtol=1e-4, atol=1e-6)


def test_packed_steps_follow_the_padded_steps():
    """Three AdamW steps of LoRA and head: the packed run's losses are the padded run's."""
    plain, head, pad = setup(9)
    fast, fast_head = copy.deepcopy(plain), copy.deepcopy(head)
    prepare_packed(fast, torch.float32)
    data = examples(10, 12)
    steps = [data[i:i + 4] for i in range(0, 12, 4)] * 2

    def run(module, loss_of) -> list[float]:
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2)
        module.train()
        losses = []
        for group in steps:
            loss, _ = loss_of(module, group)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
        return losses

    want = run(head_loss_module(plain, head), lambda m, g: padded(m, g, pad))
    got = run(head_loss_module(fast, fast_head), packed)
    assert want[3] < want[0]  # the same batch again, after learning: the run learns
    assert got == pytest.approx(want, rel=1e-4)
    torch.testing.assert_close(fast_head.weight, head.weight, rtol=1e-4, atol=1e-6)


def test_varlen_attention_ignores_other_examples():
    """Changing one example's tokens leaves another example's logits untouched."""
    model, head, _ = setup(11, lora=False)
    varlen(model)
    module = head_loss_module(model, head)
    a, b = examples(12, 2)
    other = dict(a, input_ids=[(t * 7 + 3) % 200 for t in a["input_ids"]])
    with torch.no_grad():
        _, alone = packed(module, [b])
        _, after_a = packed(module, [a, b])
        _, after_other = packed(module, [other, b])
    torch.testing.assert_close(after_a[1], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after_other[1], alone[0], rtol=1e-5, atol=1e-5)
    assert (after_a[0] - after_other[0]).abs().max() > 1e-3  # the first example did change


def test_block_mask_fallback_equals_segment_loop(monkeypatch):
    """The CUDA fallback without a varlen kernel (one masked SDPA call) gives the same
    logits as one causal SDPA call per example."""
    model, head, _ = setup(13)
    varlen(model)
    module = head_loss_module(model, head)
    batch = examples(14, 6)
    with torch.no_grad():
        loop_loss, loop = packed(module, batch)
        monkeypatch.setattr(kernels, "USE_BLOCK_MASK", True)
        masked_loss, masked = packed(module, batch)
    torch.testing.assert_close(masked, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked_loss, loop_loss, rtol=1e-5, atol=1e-6)
