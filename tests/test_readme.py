"""The README's two set-up commands exist, and CI runs exactly the README's test command."""

import re

from tests.conftest import REPO


def setup_commands():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "recipes/compare_sst2.sh" in main_job and tests.endswith("python -m pytest")
    for c in commands:
        assert c.startswith("pip install torch==2.13.0 && ")  # CPU torch first: no multi-GB CUDA resolve


def test_ci_runs_the_readme_test_command():
    ci_lines = (REPO / ".ci/run").read_text().splitlines()
    assert setup_commands()[1] in ci_lines


def test_adding_an_optimizer_example_is_one_working_entry(monkeypatch):
    """The README's example entry, registered as the README says, is listed, validated, built
    and steps: nothing else needs to change."""
    import torch

    from finetune_opt.optim import create_optimizer, list_optimizers, registry
    from finetune_opt.optim.spec import FOREACH_OR_LOOP, OptimizerSpec, betas, elementwise, number

    readme = (REPO / "README.md").read_text()
    section = readme.split("### Adding an optimizer", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)\n```", section, flags=re.S)[0]
    assert len(code.splitlines()) <= 10
    spec = eval(code.rstrip().rstrip(","), {"OptimizerSpec": OptimizerSpec, "torch": torch, "betas": betas,
                                            "number": number, "FOREACH_OR_LOOP": FOREACH_OR_LOOP,
                                            "elementwise": elementwise})
    monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    assert spec.name in [r["name"] for r in list_optimizers()]
    model = torch.nn.Linear(4, 2)
    opt = create_optimizer(spec.name, model, lr=1e-2, betas=(0.9, 0.99))
    before = model.weight.detach().clone()
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight) and opt.param_groups[0]["decoupled_weight_decay"] is True
