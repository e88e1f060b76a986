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


# --- every registry entry's groups on real architectures ----------------------------------------

from finetune_opt.measure import optimizer_state_bytes  # noqa: E402
from finetune_opt.optim import REGISTRY, create_optimizer  # noqa: E402
from finetune_opt.optim.muon import muon_parameter_names  # noqa: E402


@pytest.mark.parametrize("name", list(REGISTRY))
def test_frozen_parameters_stay_out_and_tied_weights_count_once(model, name):
    """GPT-2 and Llama (tie_word_embeddings) share the embedding with the LM head: one tensor,
    listed once; frozen tensors in no group."""
    model.get_input_embeddings().weight.requires_grad_(False)
    opt = create_optimizer(name, model)
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(trainable)
    assert {id(p) for p in in_groups} == {id(p) for p in trainable}
    model.get_input_embeddings().weight.requires_grad_(True)


def test_muon_takes_hidden_matrices_only(model):
    """Muon gets every attention and MLP matrix; embeddings and LM / classifier heads (2-D too)
    stay with AdamW, as do norms and biases."""
    names = muon_parameter_names(model)
    params = dict(model.named_parameters())
    matrices = {n for n, p in params.items() if p.ndim == 2}
    roles = ("embed", "wte", "wpe", "classifier", "lm_head")
    heads_and_embeddings = {n for n in matrices if any(k in n for k in roles)}
    assert heads_and_embeddings and names == matrices - heads_and_embeddings
    opt = create_optimizer("muon", model)
    roles = {g["group_name"]: g["use_muon"] for g in opt.param_groups}
    assert roles == {"muon": True, "decay": False, "no_decay": False}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_state_bytes_predicted_within_one_percent(name):
    """The spec's cost model (what memory prediction and the roofline use) against the bytes the
    optimizer actually holds after its first step, on tiny BERT."""
    model = transformers.BertForSequenceClassification(TINY["bert"])
    opt = create_optimizer(name, model)
    model(input_ids=torch.randint(0, 99, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    # The cost model counts buffers; per-tensor step counters (0-dim, 4-8 bytes) are left out.
    counters = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                   if torch.is_tensor(t) and t.ndim == 0)
    predicted, measured = REGISTRY[name].state_bytes_for(opt.param_groups), optimizer_state_bytes(opt) - counters
    print(f"{name}: predicted {predicted:,} measured {measured:,}")
    assert abs(measured - predicted) <= 0.01 * predicted
