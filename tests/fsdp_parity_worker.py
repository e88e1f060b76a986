"""Run under `accelerate launch --config_file accelerate_configs/fsdp2.yaml --num_processes 2`:
every registry entry trains a small BERT for 3 steps through the engine's own set-up
(make_accelerator's FSDP2 state, Accelerate's FSDP2 prepare, the whole-matrix step), each rank on
half of each batch, and is compared with the same entry on one process and the whole batch, built
in the same process without Accelerate. Rank 0 writes one JSON line per entry to argv[1]."""

import json
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

from finetune_opt.config.run_config import RunConfig
from finetune_opt.train.engine import set_up, make_accelerator
from finetune_opt.train.skips import step_skipping_on_device
from finetune_opt.measure.timing import optimizer_state_bytes, tensor_storage_bytes
from finetune_opt.optim import REGISTRY, create_optimizer, get_optimizer_spec

# 64 x 128 matrices: above torchao's 4,096-element quantisation threshold, and rows that split
# unevenly would show up in the 2-row classifier (1 row per rank) and 30-row position table.
CONFIG = BertConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                    max_position_embeddings=30, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
STEPS, BATCH, LENGTH = 3, 8, 12
HYPERPARAMS = {"lr": 1e-3, "weight_decay": 0.1}


def model():
    torch.manual_seed(0)
    return BertForSequenceClassification(CONFIG)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 96, (BATCH, LENGTH), generator=g), torch.randint(0, 2, (BATCH,), generator=g))
            for _ in range(STEPS)]


def single_process(name, halves: bool):
    """The whole batch on one process; `halves`: as two accumulated half batches, each loss / 2,
    which adds the gradients in the order FSDP2's reduce-scatter does (g0/2 + g1/2)."""
    reference = model()
    # the implementation the sharded run's config resolves (this device's default), so that the
    # comparison is of one kernel
    implementation = run_config(name, "unused").optimizer.implementation
    optimizer = create_optimizer(name, reference, implementation=implementation, **HYPERPARAMS)
    for ids, labels in batches():
        for rows in ((slice(0, BATCH // 2), slice(BATCH // 2, BATCH)) if halves else (slice(None),)):
            (reference(input_ids=ids[rows], labels=labels[rows]).loss / (2 if halves else 1)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return reference.state_dict(), optimizer


def run_config(name, output_dir) -> RunConfig:
    return RunConfig(optimizer=name, model_config={"model_type": "bert"}, log_with=None, output_dir=output_dir,
                     max_grad_norm=None, scheduler="constant", warmup_ratio=0.0, **HYPERPARAMS)


def sharded(name, accelerator, output_dir):
    cfg = run_config(name, output_dir)
    loader = torch.utils.data.DataLoader([0])  # set_up prepares a loader; this one is not iterated
    run = set_up(cfg, accelerator, model(), loader)
    rows = slice(accelerator.process_index * BATCH // 2, (accelerator.process_index + 1) * BATCH // 2)
    for ids, labels in batches():
        accelerator.backward(run.model(input_ids=ids[rows], labels=labels[rows]).loss)
        run.optimizer.step()
        run.optimizer.zero_grad()
    whole = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in run.model.state_dict().items()}
    return whole, run.optimizer.optimizer, skipped_on_device(run, *batches()[0])


def local(t: torch.Tensor) -> torch.Tensor:
    return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()


def skipped_on_device(run, ids, labels) -> bool | None:
    """For an implementation that takes found_inf: whether a step with NaN gradients and the flag
    set, as the engine skips it (train/skips.py), left every shard and state tensor as it was."""
    if not run.spec.implementations[run.cfg.optimizer.implementation].takes_found_inf:
        return None
    run.accelerator.backward(run.model(input_ids=ids, labels=labels).loss * float("nan"))
    optimizer = run.optimizer.optimizer
    tensors = [*optimizer.param_groups[0]["params"], *(t for s in optimizer.state.values() for t in s.values())]
    before = [local(t) for t in tensors]
    step_skipping_on_device(run.optimizer, torch.ones((), dtype=torch.bool))
    run.optimizer.zero_grad()
    return all(torch.equal(b, local(t)) for b, t in zip(before, tensors))


def tensor_state_bytes(optimizer) -> int:
    """State bytes without the scalars (step counters: whole on every rank, not in the prediction)."""
    return sum(tensor_storage_bytes(t) for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.ndim > 0)


def max_abs_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b if b[k].is_floating_point())


def main(out_path, output_dir):
    accelerator = make_accelerator(RunConfig(model_config={"model_type": "bert"}, log_with=None,
                                             output_dir=output_dir))
    lines = []
    for name in sys.argv[3:] or [n for n, spec in REGISTRY.items() if not spec.fsdp2_refusal]:
        expected, reference_optimizer = single_process(name, halves=False)
        expected_halves, _ = single_process(name, halves=True)
        got, optimizer, skipped = sharded(name, accelerator, output_dir)
        state = torch.tensor([tensor_state_bytes(optimizer)], dtype=torch.float64)
        lines.append({
            "optimizer": name,
            "implementation": optimizer.finetune_opt["implementation"],
            "distributed_type": accelerator.distributed_type.value,
            "sharded_parameters": sum(hasattr(p, "to_local") for p in optimizer.param_groups[0]["params"]),
            "max_abs_diff": max_abs_diff(got, expected),
            "found_inf_left_shards_unchanged": skipped,
            "max_abs_diff_to_halves": max_abs_diff(got, expected_halves),
            "halves_to_whole_batch": max_abs_diff(expected_halves, expected),
            "tensor_state_bytes_per_rank": accelerator.gather(state).tolist(),
            "single_process_state_bytes": optimizer_state_bytes(reference_optimizer),
            "predicted_state_bytes": get_optimizer_spec(name).state_bytes_for(reference_optimizer.param_groups),
            "predicted_state_bytes_of_sharded_groups": get_optimizer_spec(name).state_bytes_for(optimizer.param_groups),
        })
    if accelerator.is_main_process:
        with open(out_path, "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
