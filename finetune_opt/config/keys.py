"""The ways a setting can be written, and the one place each means: a flat key (`max_steps`), a
dotted key (`loop.max_steps`), a key of a section block (`loop: {max_steps: ...}`), the optimizer as
a name or a block (`optimizer: {name: lion, betas: [...]}`), and the first format's flat optimizer
keys (`betas`, `optimizer_args`). A layer of settings (a config file, the command line, RunConfig's
keyword arguments) becomes {(section, field): (as written, value)}, then one nested mapping."""

from finetune_opt.errors import ConfigError, one_of
from finetune_opt.measure.config_block import FLAT_NAMES, LAYOUT, OPTIMIZER_ARGS, SECTIONS, flat_name

# Flat optimizer keys of the first config format; they still work and land in the optimizer section.
LEGACY_OPTIMIZER_KEYS = ("betas", "eps", "amsgrad")


def section_fields(section: str) -> list[str]:
    return [field for s, field in LAYOUT.values() if s == section and field is not None]


def _check_section_key(section: str, field: str, where: str):
    """Any key goes in the optimizer section (its spec checks them); elsewhere, the section's fields."""
    if section != "optimizer" and field not in section_fields(section):
        raise one_of(f"config key{where}", f"{section}.{field}", [f"{section}.{f}" for f in section_fields(section)])


def _optimizer_block(block: dict, named: bool):
    if named and "name" not in block:
        raise ConfigError(f"the optimizer block needs a 'name', got keys: {', '.join(block) or 'none'}")
    yield from ((("optimizer", k), f"optimizer.{k}", v) for k, v in block.items())


def _places(key: str, value, where: str, named: bool):
    """(place, as written, value) for one key of a layer."""
    if key == "optimizer" and isinstance(value, dict):
        yield from _optimizer_block(value, named)
    elif key in SECTIONS and (isinstance(value, dict) or key not in LAYOUT):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its settings, got {value!r}")
        for field, v in value.items():
            _check_section_key(key, field, where)
            yield (key, field), f"{key}.{field}", v
    elif key == OPTIMIZER_ARGS:
        if not isinstance(value, dict):
            raise ConfigError(f"optimizer_args must be a mapping, got {value!r}")
        yield from ((("optimizer", k), f"optimizer.{k}", v) for k, v in value.items())
    elif key in LAYOUT:
        yield LAYOUT[key], key, value
    elif key in LEGACY_OPTIMIZER_KEYS:
        yield ("optimizer", key), key, value
    elif key.partition(".")[0] in SECTIONS and key.partition(".")[2]:
        section, _, field = key.partition(".")
        _check_section_key(section, field, where)
        yield (section, field), key, value
    else:
        raise one_of(f"config key{where}", key, FLAT_NAMES)


def check_key(key: str, where: str = ""):
    """A key any layer may hold (its value is checked with the section)."""
    if key in LAYOUT or key in LEGACY_OPTIMIZER_KEYS or key in SECTIONS:
        return
    section, _, field = key.partition(".")
    if section not in SECTIONS or not field:
        raise one_of(f"config key{where}", key, FLAT_NAMES)
    _check_section_key(section, field, where)


def value_of(found: dict, section: str | None, field: str):
    """The value a layer of settings gives one place, None where it gives none."""
    return found.get((section, field), (None, None))[1]


def settings(pairs, source: str, where: str = "", named_optimizer: bool = True) -> dict:
    """{(section, field): (as written, value)} of one layer's (key, value) pairs. One setting spelled
    two ways with two values in one place would silently keep one: refused (the same key repeated is
    an override: the later wins). `where` qualifies unknown-key messages, e.g. ' (in FILE)'. An optimizer
    block a user writes names its optimizer (named_optimizer); RunConfig's own arguments may leave the default."""
    found = {}
    for key, value in pairs:
        for place, spelling, v in _places(key, value, where, named_optimizer):
            first = found.get(place)
            if first and first[0] != spelling and first[1] != v:
                raise ConfigError(f"{source} sets {flat_name(*place)} twice: {first[0]}={first[1]} and "
                                  f"{spelling}={v}; give it once")
            found[place] = (spelling, v) if not first or first[0] == spelling else first
    return found


def flat_spellings(values: dict, source: str) -> dict:
    """Settings in any spelling -> {flat name (section.field where there is none): value}: the short
    keys a study's overrides and axes are merged and named by, whether its file writes them flat or
    in sections."""
    found = settings(values.items(), source, named_optimizer=False)
    return {flat_name(*place): value for place, (_, value) in found.items()}


def nested(found: dict) -> dict:
    """{(section, field): (as written, value)} -> {task: ..., section: {field: value}}."""
    values = {}
    for (section, field), (_, value) in found.items():
        if section is None:
            values[field] = value
        else:
            values.setdefault(section, {})[field] = value
    return values
