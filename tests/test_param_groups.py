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

from finetune_opt.measure.timing import optimizer_state_bytes  # noqa: E402
from finetune_opt.optim import REGISTRY, create_optimizer, runs_on  # noqa: E402
from finetune_opt.optim.muon import muon_parameter_names  # noqa: E402


TIED = {  # LM heads that share the embedding tensor (transformers' Llama default is untied)
    "gpt2": TINY["gpt2"],
    "llama": transformers.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=37, tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", runs_on("cpu"))
@pytest.mark.parametrize("arch", list(TIED))
def test_frozen_parameters_stay_out_and_tied_weights_count_once(arch, name):
    """The embedding shared with the LM head is one tensor, trainable, listed exactly once; a frozen
    tensor (here a norm weight, not the tied one) is in no group."""
    model = transformers.AutoModelForCausalLM.from_config(TIED[arch])
    tied = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is tied  # really tied
    frozen = next(p for n, p in model.named_parameters() if "norm" in n or ".ln_" in n)
    frozen.requires_grad_(False)
    in_groups = [p for g in create_optimizer(name, model).param_groups for p in g["params"]]
    assert sum(p is tied for p in in_groups) == 1 and not any(p is frozen for p in in_groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(trainable)
    assert {id(p) for p in in_groups} == {id(p) for p in trainable}


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


# Models with their repeated blocks, and the dense layers outside them that the old name rule
# sent to Muon (pooler.dense, pre_classifier, the plain Sequential's output layer) or to AdamW.
SPLIT_CASES = {
    "bert_classifier": (lambda: transformers.BertForSequenceClassification(TINY["bert"]),
                        "bert.encoder.layer.", ["bert.pooler.dense.weight", "classifier.weight"]),
    "distilbert_classifier": (lambda: transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=37)), "distilbert.transformer.layer.",
        ["pre_classifier.weight", "classifier.weight"]),
    "roberta_classifier": (lambda: transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)),
        "roberta.encoder.layer.", ["classifier.dense.weight", "classifier.out_proj.weight"]),
    "bert_mlm": (lambda: transformers.BertForMaskedLM(TINY["bert"]), "bert.encoder.layer.",
                 ["cls.predictions.transform.dense.weight"]),
    "gpt2": (lambda: transformers.GPT2LMHeadModel(TINY["gpt2"]), "transformer.h.", ["transformer.wte.weight"]),
    "llama": (lambda: transformers.LlamaForCausalLM(TINY["llama"]), "model.layers.", ["model.embed_tokens.weight"]),
    "sequential_mlp": (_mlp, "", ["4.weight"]),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_muon_takes_the_blocks_linear_weights_and_adamw_everything_else(case):
    """One rule: Muon gets the weight of every linear layer inside the repeated blocks; heads
    and their dense layers, embeddings, norms and biases go to AdamW, whatever their names. (A
    model without a ModuleList is one block whose last linear layer is the output.)"""
    make, blocks, outside = SPLIT_CASES[case]
    model = make()
    params = dict(model.named_parameters())
    linear_weights = {f"{n}.weight" for n, m in model.named_modules()
                      if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"}
    expected = {n for n in linear_weights if n.startswith(blocks) and n not in outside}
    assert expected and muon_parameter_names(model) == expected
    opt = create_optimizer("muon", model)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert {n for n, p in params.items() if id(p) in muon_ids} == expected
    assert all(id(params[n]) not in muon_ids for n in outside)


class _Block(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _one_step_update(layer, adjust_lr_fn) -> torch.Tensor:
    """The update Muon makes to the weight of `layer` (in the blocks of a model) in one step."""
    model = torch.nn.ModuleList([_Block(layer)])
    opt = create_optimizer("muon", model, lr=0.02, weight_decay=0.0, adjust_lr_fn=adjust_lr_fn)
    before = layer.weight.detach().clone()
    x = torch.randn(4, layer.weight.numel() // layer.bias.numel(), generator=torch.Generator().manual_seed(1))
    model[0](x).pow(2).sum().backward()
    opt.step()
    return layer.weight.detach() - before


@pytest.mark.parametrize("adjust_lr_fn", REGISTRY["muon"].hyperparams["adjust_lr_fn"].options)
@pytest.mark.parametrize("n_in,n_out", [(8, 32), (32, 8)])  # c_fc-like (in < out), mlp.c_proj-like
def test_conv1d_steps_as_the_linear_it_stands_for(adjust_lr_fn, n_in, n_out):
    """GPT-2's Conv1D stores its weight (in, out), the transpose of the Linear it is. Muon's lr
    rule must read the logical (out, in) shape: with "original" the stored one halved c_fc's
    update and doubled mlp.c_proj's. Both layers now get the same update, transposed."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(n_out, n_in)
    linear = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    conv_update, linear_update = _one_step_update(conv, adjust_lr_fn), _one_step_update(linear, adjust_lr_fn)
    assert torch.allclose(conv_update.T, linear_update, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", runs_on("cpu"))
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
