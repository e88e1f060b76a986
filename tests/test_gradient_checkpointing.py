"""gradient_checkpointing: the same losses and gradients (dropout on: the RNG is replayed), with a
LoRA adapter too, and the activation memory the breakdown predicts."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from finetune_opt.config.run_config import RunConfig
from finetune_opt.errors import ConfigError
from finetune_opt.models.loading import enable_gradient_checkpointing
from finetune_opt.models.peft import apply_peft
from tests.test_reliability import fresh_accelerate_state  # noqa: F401 (fixture)

BERT = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=64)
LLAMA = LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64)


def bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BERT)


def lora_llama():
    torch.manual_seed(0)
    return apply_peft(LlamaForCausalLM(LLAMA), {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1,
                                                 "target_modules": ["q_proj", "v_proj"]})


def loss_and_grads(build, batch, checkpointed: bool):
    model = build()
    if checkpointed:
        enable_gradient_checkpointing(model)
    model.train()
    torch.manual_seed(1)  # dropout masks
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build,batch", [
    (bert, {"input_ids": torch.randint(0, 200, (4, 16)), "labels": torch.tensor([0, 1, 1, 0])}),
    (lora_llama, {"input_ids": torch.randint(0, 200, (2, 24)), "labels": torch.randint(0, 200, (2, 24))}),
], ids=["bert", "llama-lora"])
def test_checkpointing_gives_the_same_loss_and_gradients(build, batch):
    plain_loss, plain = loss_and_grads(build, batch, checkpointed=False)
    ckpt_loss, ckpt = loss_and_grads(build, batch, checkpointed=True)
    assert ckpt_loss == plain_loss
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    assert max((plain[n] - ckpt[n]).abs().max().item() for n in plain) <= 1e-6


def test_a_model_without_support_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="^gradient_checkpointing: Linear does not support it; set "
                                           "gradient_checkpointing=false$"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def activations(tmp_path, checkpointed: bool) -> tuple[int, int]:
    from finetune_opt.train.engine import fit, make_accelerator
    cfg = RunConfig(model_config={"model_type": "bert"}, max_steps=3, timing_warmup_steps=2, log_with=None,
                    last_layer_cls_only=False, gradient_checkpointing=checkpointed, warmup_ratio=0,
                    output_dir=str(tmp_path / str(checkpointed)))
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 200, (64,), generator=g), "labels": torch.tensor(i % 2)} for i in range(48)]
    result = fit(cfg, make_accelerator(cfg), bert(), torch.utils.data.DataLoader(data, batch_size=16), lambda m: {})
    b = result.memory["breakdown"]
    return b["measured"]["activations_and_workspace"], b["predicted"]["activations_and_workspace"], b["measured"]["backward_peak_above_forward_start"], b["measured"]["gradients"]


def test_checkpointing_lowers_activation_memory_as_predicted(tmp_path):
    """Without checkpointing the activation peak is the forward pass's (everything saved for
    backward). With it, forward keeps each layer's input only, and the peak moves into backward,
    where one layer at a time is recomputed: that peak, less the gradients then alive, is what the
    prediction (inputs + one layer) describes."""
    plain_forward, plain_predicted, _, _ = activations(tmp_path, checkpointed=False)
    ckpt_forward, ckpt_predicted, ckpt_backward_peak, gradients = activations(tmp_path, checkpointed=True)
    assert plain_forward == pytest.approx(plain_predicted, rel=0.25)
    assert ckpt_predicted < plain_predicted / 3
    assert ckpt_backward_peak - gradients == pytest.approx(ckpt_predicted, rel=0.25)
    assert ckpt_forward < ckpt_predicted < plain_forward / 3
