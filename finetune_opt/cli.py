"""`finetune-opt` command line: list-optimizers, inspect, compare, study, configs, config-schema, plan.

Bad input raises ConfigError anywhere below; main() prints it as one line and exits 2, the same
code argparse uses for usage errors.
"""

import argparse
import json
import sys

from finetune_opt import distributed
from finetune_opt.errors import ConfigError
from finetune_opt.optim import (IMPLEMENTATION_NAMES, REGISTRY, create_optimizer, describe_optimizer,
                                get_optimizer_spec, list_optimizers)


def cmd_list_optimizers(args):
    rows = list_optimizers()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        pad = " " * 20
        print(f"{row['name']:<20}{row['description']}")
        print(f"{pad}class {row['class']}" + (f"  (pip extra: {row['extra']})" if row["extra"] else ""))
        print(f"{pad}hyperparameters: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in row["hyperparameters"].items()))
        here = distributed.device_type()
        default = row["device_defaults"].get(here, row["default_implementation"])
        impls = "; ".join(f"{impl}{'*' if impl == default else ''}{'!' if impl in row['skip_nonfinite_on_device'] else ''}"
                          f" ({', '.join(devices)})" for impl, devices in row["implementations"].items())
        print(f"{pad}implementations (* default on {here}; ! skips a NaN/inf step on the device) and devices: {impls}")
        print(f"{pad}measured step: " + ("; ".join(_step_cost(device, cost) for device, cost in row["measured_step"].items())
                                         or "not timed"))


def _step_cost(device: str, cost: dict) -> str:
    """'cpu: compiled 343 ms, for-loop 1021 ms = 3.0x fused AdamW (bert-base-110M float32; cpu (2 cores), 2026-12-03)'"""
    times = ", ".join(f"{impl} {ms:,.0f} ms" if ms >= 100 else f"{impl} {ms:.3g} ms"
                      for impl, ms in sorted(cost["median_ms"].items(), key=lambda kv: kv[1]))
    return (f"{device}: {times} = {cost['x_fused_adamw']}x fused AdamW "
            f"({cost['parameters']} {cost['dtype']}; {cost['machine']}, {cost['date']})")


def cmd_inspect(args):
    """Build the optimizer for a model and show its groups: what will and will not be decayed."""
    from finetune_opt.models.loading import load_model  # transformers import only when needed

    spec = get_optimizer_spec(args.optimizer)
    hyperparams = {k: v for k, v in (("lr", args.lr), ("weight_decay", args.weight_decay)) if v is not None}
    spec.validate(hyperparams)
    spec.resolve_implementation(args.implementation)  # before the slow load
    model = load_model(args.model, head=args.head)
    optimizer = create_optimizer(args.optimizer, model, implementation=args.implementation, **hyperparams)
    names = {id(p): n for n, p in model.named_parameters()}
    print(f"optimizer {json.dumps(describe_optimizer(optimizer))}")
    print(f"state: {spec.state_bytes_for(optimizer.param_groups) / 2**20:.1f} MiB predicted")
    for group in optimizer.param_groups:
        count = sum(p.numel() for p in group["params"])
        role = "" if "use_muon" not in group else f" ({'Muon' if group['use_muon'] else 'AdamW'})"
        print(f"group {group['group_name']}{role}: weight_decay={group['weight_decay']} "
              f"tensors={len(group['params'])} params={count:,}")
        if args.verbose:
            for p in group["params"]:
                print(f"  {names[id(p)]} {tuple(p.shape)}")
    if any(g.get("use_muon") for g in optimizer.param_groups):
        from finetune_opt.optim.muon import describe_split
        print(describe_split(model))


def cmd_compare(args):
    from finetune_opt.report.compare import write_comparison

    print(write_comparison(args.runs, args.out))


def cmd_study(args):
    from finetune_opt.study.runner import run_study

    print(run_study(args.config, args.parallel, args.overrides, report_only=args.report_only))


def cmd_configs(args):
    from finetune_opt.config import builtin as configs

    print(configs.copy(args.name, args.dest) if args.action == "cp" else configs.listing())


def cmd_config_schema(args):
    from finetune_opt.config.run_config import json_schema

    print(json.dumps(json_schema(), indent=2))


def cmd_plan(args):
    from finetune_opt.plan import planner as plan

    print(plan.run(args))


def build_parser() -> argparse.ArgumentParser:
    from finetune_opt.models.loading import MODEL_HEADS  # (imports torch, as finetune_opt.optim does)

    parser = argparse.ArgumentParser(prog="finetune-opt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list-optimizers", help="show the registered optimizer factories")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list_optimizers)

    p = sub.add_parser("inspect", help="show the parameter groups an optimizer builds for a model")
    p.add_argument("--optimizer", required=True, help=f"one of: {', '.join(REGISTRY)}")
    p.add_argument("--implementation", help=f"one of: {', '.join(IMPLEMENTATION_NAMES)}")
    p.add_argument("--model", required=True, help="HF Hub name or local directory")
    p.add_argument("--head", default="base", choices=list(MODEL_HEADS),
                   help="the model head to load (default: base, the model without a head)")
    p.add_argument("--lr", type=float, help="default: the optimizer's")
    p.add_argument("--weight-decay", type=float, help="default: the optimizer's")
    p.add_argument("-v", "--verbose", action="store_true", help="list every parameter")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("compare", help="Markdown table and PNG plots across run directories")
    p.add_argument("runs", nargs="+", help="run directories holding results.json")
    p.add_argument("--out", required=True, help="report directory to write")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("study", help="optimizers x seeds (x hyperparameters) with a report; resumable")
    p.add_argument("--config", required=True, help="study YAML (see docs/optimizer_study/study.yaml)")
    p.add_argument("--parallel", type=int, default=1,
                   help="cells run at once, each its own process (a GPU box: several share the GPU)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: report the finished cells, labelled PARTIAL when some are missing")
    p.add_argument("overrides", nargs="*", help="key=value for every cell, over the YAML (e.g. model=DIR)")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("configs", help="the packaged recipe configs (--config NAME): list them, or copy one out")
    p.set_defaults(func=cmd_configs, action="ls")
    actions = p.add_subparsers(dest="action")
    actions.add_parser("ls", help="list them with a line each (the default)")
    c = actions.add_parser("cp", help="copy one out to edit; an existing file is not overwritten")
    c.add_argument("name", help="a packaged config's name (finetune-opt configs)")
    c.add_argument("dest", help="the file to write, or a folder (then <folder>/<name>.yaml)")
    p = sub.add_parser("config-schema", help="the run configuration's JSON Schema, for an editor to complete and "
                                             "check a config file")
    p.set_defaults(func=cmd_config_schema)
    from finetune_opt.plan.planner import add_parser as add_plan_parser
    add_plan_parser(sub).set_defaults(func=cmd_plan)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"finetune-opt: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
