"""The optimizer in a config: a block, the legacy flat keys, and one-line overrides all mean the
same RunConfig, validated against that optimizer's own schema, with defaults filled in."""

import pytest

from finetune_opt import distributed
from finetune_opt.config.loading import load_config
from finetune_opt.errors import ConfigError
from finetune_opt.optim import REGISTRY


def config(tmp_path, yaml_text, *overrides):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    return load_config(str(path), list(overrides))


def test_block_flat_and_overrides_agree(tmp_path):
    block = config(tmp_path, "optimizer: {name: lion, lr: 1.0e-5, weight_decay: 0.2, betas: [0.9, 0.95]}\n")
    flat = config(tmp_path, "optimizer: lion\nlr: 1.0e-5\nweight_decay: 0.2\nbetas: [0.9, 0.95]\n")
    dotted = config(tmp_path, "", "optimizer=lion", "optimizer.lr=1e-5", "optimizer.weight_decay=0.2",
                    "optimizer.betas=[0.9,0.95]")
    for c in (block, flat, dotted):
        assert (c.optimizer.name, c.optimizer.implementation, c.optimizer.lr, c.optimizer.weight_decay, c.optimizer.args) == \
            ("lion", REGISTRY["lion"].default_for(distributed.device_type()), 1e-5, 0.2, {"betas": [0.9, 0.95]})


@pytest.mark.parametrize("name", list(REGISTRY))
def test_unset_hyperparameters_take_the_entrys_defaults(tmp_path, name):
    spec = REGISTRY[name]
    c = config(tmp_path, f"optimizer: {name}\nwarmup_ratio: 0\n")
    assert c.optimizer.lr == spec.default_lr and c.optimizer.weight_decay == spec.default_weight_decay
    # the fastest measured on this machine's device (config/schema.py)
    assert c.optimizer.implementation == spec.device_defaults.get(distributed.device_type(),
                                                                  spec.default_implementation)
    assert set(c.optimizer.args) == set(spec.hyperparams)
    assert c.optimizer.hyperparams.keys() == spec.all_hyperparams.keys()


def test_yaml_exponent_strings_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-8 (no dot) as a string; inside the block too."""
    c = config(tmp_path, "optimizer: {name: adamw, eps: 1e-8, lr: 3e-5}\n")
    assert c.optimizer.args["eps"] == 1e-8 and c.optimizer.lr == 3e-5


def test_warmup_ratio_becomes_schedule_free_warmup_steps(tmp_path):
    c = config(tmp_path, "optimizer: adamw_schedule_free\nmax_steps: 200\nwarmup_ratio: 0.1\n")
    assert c.optimizer.args["warmup_steps"] == 20
    with pytest.raises(ConfigError, match="give warmup_ratio or optimizer.warmup_steps, not both"):
        config(tmp_path, "optimizer: {name: adamw_schedule_free, warmup_steps: 5}\nwarmup_ratio: 0.1\n")


@pytest.mark.parametrize("text,message", [
    ("optimizer: {lr: 0.1}\n", "the optimizer block needs a 'name', got keys: lr"),
    ("optimizer: 5\n", "optimizer must be a string, got 5"),
    ("optimizer: adamw\noptimizer_args: [1]\n", "optimizer_args must be a mapping, got [1]"),
    ("optimizer: {name: adafactor, betas: [0.9, 0.99]}\n",
     "optimizer 'adafactor' has no hyperparameter 'betas'; its hyperparameters: lr, weight_decay, beta2_decay, d, eps"),
    ("optimizer: {name: muon, ns_steps: 0}\n", "muon: ns_steps must be an integer in [1, 99], got 0"),
    ("optimizer: {name: muon, adjust_lr_fn: spectral}\n",
     "muon: adjust_lr_fn must be one of: match_rms_adamw, original, got 'spectral'"),
])
def test_bad_optimizer_blocks_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, text)
    assert str(e.value) == message


@pytest.mark.parametrize("name", list(REGISTRY))
def test_under_fsdp2_the_default_is_one_that_steps_shards(tmp_path, monkeypatch, name):
    """The device's fastest, unless torch cannot step FSDP2's DTensor shards with it (fused SGD):
    then the device-independent default, never a run that fails at its first step."""
    spec = REGISTRY[name]
    if spec.fsdp2_refusal:
        return
    for key, value in {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    implementation = config(tmp_path, f"optimizer: {name}\n").optimizer.implementation
    assert spec.implementations[implementation].steps_shards
    fastest = spec.device_defaults.get(distributed.device_type(), spec.default_implementation)
    assert implementation == (fastest if spec.implementations[fastest].steps_shards else spec.default_implementation)
