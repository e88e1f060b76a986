"""Checkpoints of every registry entry: exact round trip, implementation switch, flags that a
checkpoint cannot change, state-shaping mismatches refused before any state is taken, and results
that report what was loaded."""

import copy
import io

import pytest
import torch

from finetune_opt.errors import ConfigError
from finetune_opt.optim import REGISTRY, create_optimizer, describe_optimizer, runs_on
from tests.nets import net

NAMES = runs_on("cpu")  # entries that run only elsewhere: refused here (test_optim_parity)


def here(spec) -> list[str]:
    return [i for i in spec.implementations if spec.supports(i, "cpu")]


def train(model, opt, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 24, (8,), generator=gen)
        model(ids).square().mean().backward()
        opt.step()
        opt.zero_grad()


def built(name, impl=None, **hp):
    model = net()
    return model, create_optimizer(name, model, implementation=impl, lr=1e-3, **hp)


def saved(opt) -> dict:
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def kernel_flags(opt):
    return [{k: g[k] for k in ("foreach", "fused") if k in g} for g in opt.param_groups]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_continues_bit_identically(name):
    model, opt = built(name)
    train(model, opt, 3, seed=1)
    state, weights = saved(opt), copy.deepcopy(model.state_dict())
    train(model, opt, 3, seed=2)

    resumed, opt2 = built(name)
    resumed.load_state_dict(weights)
    opt2.load_state_dict(state)
    train(resumed, opt2, 3, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(params(model), params(resumed)))


def _max_difference(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(params(a), params(b)))


# Implementations differ by float rounding only; dropping the optimizer state moves the weights by
# two orders of magnitude more (checked below for every entry, so the comparison can fail).
IMPLEMENTATION_TOLERANCE = 1e-6


@pytest.mark.parametrize("name", [n for n in NAMES if len(here(REGISTRY[n])) > 1])
def test_checkpoint_of_one_implementation_resumes_in_every_other(name):
    """E.g. compiled (which feeds the step a tensor lr) saved, foreach loaded: foreach kernels
    refuse a tensor lr, so lr must be a float again and the flags the new implementation's. The
    trained weights and state are loaded, and two more steps land where the saving run's own two
    more steps land."""
    spec = REGISTRY[name]
    for saved_impl in here(spec):
        model, opt = built(name, saved_impl)
        train(model, opt, 2, seed=1)
        state, weights = saved(opt), copy.deepcopy(model.state_dict())
        train(model, opt, 2, seed=3)  # the saving run, continued
        for impl in here(spec):
            m2, opt2 = built(name, impl)
            m2.load_state_dict(weights)
            expected_flags = kernel_flags(opt2)
            opt2.load_state_dict(copy.deepcopy(state))  # loaded tensors alias the dict's: steps would change it
            assert kernel_flags(opt2) == expected_flags
            assert all(torch.is_tensor(g["lr"]) == spec.tensor_lr for g in opt2.param_groups)
            train(m2, opt2, 2, seed=3)
            assert _max_difference(m2, model) < IMPLEMENTATION_TOLERANCE, (saved_impl, impl)
        fresh, opt3 = built(name, saved_impl)  # the same weights without the state: far off
        fresh.load_state_dict(weights)
        train(fresh, opt3, 2, seed=3)
        assert _max_difference(fresh, model) > 100 * IMPLEMENTATION_TOLERANCE


def test_plain_torch_does_overwrite_flags():
    """The behaviour the guard exists for: without it the checkpoint's flags win."""
    model, foreach_opt = built("adamw", "foreach")
    train(model, foreach_opt, 1, seed=1)
    plain = torch.optim.AdamW([{"params": list(g["params"])} for g in foreach_opt.param_groups], fused=True)
    plain.load_state_dict(foreach_opt.state_dict())
    assert plain.param_groups[0]["fused"] is not True


_trained_states = {}


def trained_state(name) -> dict:
    """Each entry's state after one step, built once (torchao compiles its step)."""
    if name not in _trained_states:
        model, opt = built(name)
        train(model, opt, 1, seed=1)
        _trained_states[name] = saved(opt)
    return _trained_states[name]


def untouched(opt) -> tuple:
    """What a refused load must leave as it was: the groups (values and parameters) and the state."""
    groups = [repr({k: v for k, v in g.items() if k != "params"}) for g in opt.param_groups]
    return groups, [id(p) for g in opt.param_groups for p in g["params"]], repr(dict(opt.state))


@pytest.mark.parametrize("saved_by", NAMES)
def test_another_algorithms_state_is_refused_before_anything_changes(saved_by):
    """Through the public API (create_optimizer, then load_state_dict, as the Trainer resumes):
    another algorithm's state used to continue silently on mixed state (adam_l2 <-> adamw, adamw ->
    lion), crash at the next step (adamw -> adafactor, sgd, schedule-free) or raise a KeyError after
    the groups were replaced (lion -> adamw). Now one line names both, and nothing was taken; an
    entry that differs only in kernel (adamw <-> adamw_fused) loads and steps."""
    state = trained_state(saved_by)
    for name in NAMES:
        model, opt = built(name)
        same = REGISTRY[name].optimizer_class == REGISTRY[saved_by].optimizer_class and \
            REGISTRY[name].fixed_kwargs == REGISTRY[saved_by].fixed_kwargs
        if same:
            opt.load_state_dict(state)
            assert len(opt.state) == len(list(model.parameters()))
            continue
        before = untouched(opt)
        with pytest.raises(ConfigError) as refused:
            opt.load_state_dict(state)
        assert str(refused.value) == (f"optimizer state saved by {saved_by!r} cannot be loaded into {name!r}: "
                                      f"another algorithm's state; load it into a {saved_by!r} optimizer")
        assert untouched(opt) == before


def test_same_algorithm_other_entry_continues_exactly():
    """adamw_fused's state resumes adamw (one algorithm, two kernels) as it resumes itself."""
    model, fused = built("adamw_fused")
    train(model, fused, 2, seed=1)
    state, weights = saved(fused), copy.deepcopy(model.state_dict())
    train(model, fused, 2, seed=2)
    resumed, adamw = built("adamw", "fused")
    resumed.load_state_dict(weights)
    adamw.load_state_dict(state)
    train(resumed, adamw, 2, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(params(model), params(resumed)))
    assert {g["finetune_opt_name"] for g in adamw.param_groups} == {"adamw"}  # what it saves next


@pytest.mark.parametrize("name", [n for n in NAMES if REGISTRY[n].structural])
def test_state_shaping_mismatch_is_refused_before_loading(name):
    """AMSGrad's v_max, SGD's momentum buffer: a checkpoint without them cannot resume a run that
    needs them. The refusal comes before the optimizer took any of the checkpoint's state."""
    spec = REGISTRY[name]
    key = spec.structural[0]
    other = not spec.all_hyperparams[key].default if isinstance(spec.all_hyperparams[key].default, bool) else 0.0
    model, opt = built(name)
    train(model, opt, 1, seed=1)
    _, mismatched = built(name, **{key: other})
    with pytest.raises(ConfigError, match=f"^checkpoint was saved with {key}="):
        mismatched.load_state_dict(opt.state_dict())
    assert len(mismatched.state) == 0


@pytest.mark.parametrize("name", NAMES)
def test_results_report_the_loaded_hyperparameters(name):
    """A checkpoint's lr and weight decay replace the built ones; the description follows."""
    model, opt = built(name, weight_decay=0.05)
    for g in opt.param_groups:
        g["initial_lr"] = 1e-3  # as an LR scheduler records it
    train(model, opt, 1, seed=1)
    _, other = built(name, weight_decay=0.2)
    assert describe_optimizer(other)["weight_decay"] == 0.2
    other.load_state_dict(opt.state_dict())
    described = describe_optimizer(other)
    assert described["weight_decay"] == 0.05 and described["lr"] == pytest.approx(1e-3)
    assert described["name"] == name and set(REGISTRY[name].all_hyperparams) <= set(described)


def test_compiled_step_refuses_to_run_eagerly_past_dynamos_limit():
    """adam_l2 and adamw share Adam.step: the 9th compiled instance in a process would silently
    run eagerly (the benchmark rows that did so looked compiled); here it is an error."""
    import torch._dynamo

    limit = torch._dynamo.config.recompile_limit
    for i in range(limit + 1):
        model, opt = built("adam_l2" if i % 2 else "adamw", "compiled")
        model(torch.randint(0, 24, (4,))).sum().backward()
        if i < limit:
            opt.step()
        else:
            with pytest.raises(RuntimeError, match="step ran eagerly: torch._dynamo's recompile limit"):
                opt.step()
