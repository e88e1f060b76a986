"""Our decay/no-decay split equals the HF Trainer's on BERT, GPT-2 and Llama-style models."""

import pytest
import torch
import transformers
from transformers import Trainer

from finetune_opt.optim import build_param_groups, decay_parameter_names

TINY = {
    "bert": transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=37),
    "gpt2": transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=2),
    "llama": transformers.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=37),
}


@pytest.fixture(params=list(TINY), scope="module")
def model(request):
    return transformers.AutoModelForCausalLM.from_config(TINY[request.param]) if request.param != "bert" \
        else transformers.BertForSequenceClassification(TINY["bert"])


def test_decay_names_equal_hf_trainer(model):
    ours = set(decay_parameter_names(model))
    theirs = set(Trainer.get_decay_parameter_names(None, model))  # does not use self
    assert ours == theirs
    # And the split is not trivial: both sides non-empty, no norm or bias in the decay side.
    assert ours and set(dict(model.named_parameters())) - ours
    assert not any("bias" in n or "norm" in n.lower() for n in ours)


def test_groups_partition_trainable_params(model):
    model.get_input_embeddings().weight.requires_grad_(False)  # frozen params stay out
    groups = build_param_groups(model, weight_decay=0.05)
    in_groups = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(in_groups) == len(trainable) and {id(p) for p in in_groups} == {id(p) for p in trainable}
    assert {g["group_name"]: g["weight_decay"] for g in groups} == {"decay": 0.05, "no_decay": 0.0}


def test_rmsnorm_and_custom_norm_names_excluded():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.RMSNorm(4)
            self.q_norm = torch.nn.RMSNorm(4)
            self.final_layernorm = torch.nn.LayerNorm(4)

    assert decay_parameter_names(Block()) == ["proj.weight"]
