"""Tasks: collate, loss and metrics semantics."""

import torch
from conftest import classification_examples, make_bert, make_llama, tiny_tokenizer

from archskip import AdapterConfig, SkipModel, SkipPlan, TaskConfig
from archskip.data.loader import make_loader
from archskip.tasks import CausalLM, build_task, evaluate
from archskip.tasks.causal_lm import IGNORE


def test_causal_lm_masks_the_prompt_and_padding():
    tok = tiny_tokenizer()
    task = CausalLM(tok, max_length=32)
    batch = task.collate([{"text": "w1 w2 w3", "label": "w4 w5"}, {"text": "w1", "label": "w6"}])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    # row 0: [CLS] w1 w2 w3 [SEP] | w4 w5 [EOS]
    assert labels[0].tolist()[-3:] == ids[0].tolist()[-3:] and (labels[0, :-3] == IGNORE).all()
    n1 = int(mask[1].sum())
    assert (labels[1, n1:] == IGNORE).all() and labels[1, n1 - 2 : n1].tolist() == ids[1, n1 - 2 : n1].tolist()


def test_causal_lm_exact_match_is_greedy_decoding():
    """Teacher-forced exact match counts an answer right iff greedy decoding reproduces it."""
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = SkipModel(make_llama(), AdapterConfig.lavin())
    model.apply_plan(SkipPlan((2,), 5))
    task = CausalLM(tok)
    prompts = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9"]
    answers = []
    for p in prompts:
        enc = tok(p, return_tensors="pt", return_token_type_ids=False)
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
        answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:]))
    greedy = [{"text": p, "label": a} for p, a in zip(prompts, answers)]
    # the collate adds [EOS] after the answer, which greedy decoding need not produce: check answer tokens
    m = evaluate(model, task, make_loader(greedy, task.collate, 3))
    wrong = [{"text": p, "label": "w0 w0 w0"} for p in prompts]
    m_wrong = evaluate(model, task, make_loader(wrong, task.collate, 3))
    assert m["loss"] < m_wrong["loss"]
    # per-token: every answer token (without the final EOS) is the argmax under teacher forcing
    batch = task.collate(greedy)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pred, target = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
    eos = tok.eos_token_id
    answer_tokens = (target != IGNORE) & (target != eos)
    assert (pred[answer_tokens] == target[answer_tokens]).all()


def test_classification_accepts_models_without_token_types():
    tok = tiny_tokenizer()
    from conftest import DEC
    from transformers import LlamaConfig, LlamaModel

    base = LlamaModel(LlamaConfig(**DEC)).eval()
    model = SkipModel(base, AdapterConfig.lavin())
    examples = classification_examples(8)
    task = build_task(TaskConfig(pooling="mean"), tok, examples)
    task.attach_head(model)
    metrics = evaluate(model, task, make_loader(examples, task.collate, 4))
    assert metrics["n"] == 8 and 0 <= metrics["accuracy"] <= 1


def test_classification_pair_inputs_and_cls_pooling():
    tok = tiny_tokenizer()
    model = SkipModel(make_bert(), AdapterConfig(hidden=8, skip_hidden=16))
    examples = [{"text": "w1 w2", "text_pair": "w3", "label": 1}, {"text": "w4", "text_pair": "w5 w6", "label": 0}]
    task = build_task(TaskConfig(), tok, examples)
    task.attach_head(model)
    batch = task.collate(examples)
    assert (batch["token_type_ids"][0] == 1).any()
    assert task.logits(model, batch).shape == (2, 2)


def test_next_token_losses_match_each_row_scored_alone(monkeypatch):
    """Rows that insert different numbers of tokens, logits that end early (LaVIN sizes them to the longest
    unpadded row), groups cut by the float32 budget and an empty batch: every row's losses are those of its own
    next tokens at its own offset, 0 where its logits end."""
    import itertools

    import archskip.tasks.causal_lm as causal_lm

    torch.manual_seed(0)
    B, T, V = 5, 7, 11
    ids = torch.randint(0, V, (B, T))
    full = torch.randn(B, T + 3, V)
    for inserted, length in itertools.product((torch.tensor([2, 2, 0, 3, 3]), torch.full((B,), 2)), (T + 3, T, T - 3)):
        logits = full[:, :length]
        want = torch.zeros(B, T - 1)
        for b in range(B):
            s = int(inserted[b])
            n = max(0, min(T - 1, length - s))
            want[b, :n] = torch.tensor([-logits[b, s + t].log_softmax(-1)[ids[b, t + 1]] for t in range(n)])
        for budget in (2**26, 1):  # one cross-entropy per run of equal inserts, or one per row
            monkeypatch.setattr(causal_lm, "FLOAT_COPY", budget)
            assert torch.allclose(causal_lm.next_token_losses(logits, ids, inserted), want, atol=1e-5)
    assert causal_lm.next_token_losses(full[:0], ids[:0], inserted[:0]).shape == (0, T - 1)
    assert torch.equal(causal_lm.next_token_losses(full[:, :T], ids), causal_lm.next_token_losses(full[:, :T], ids, torch.zeros(B, dtype=torch.long)))
