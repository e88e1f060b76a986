"""The run configuration in sections (finetune_opt.config.schema): its JSON Schema names every
section and field and accepts every packaged config; flat keys, dotted keys and section blocks mean
the same settings."""

import json
from pathlib import Path

import pytest
import yaml

from finetune_opt.cli import main
from finetune_opt.config import builtin as packaged_configs
from finetune_opt.config.loading import load_config
from finetune_opt.config.run_config import RunConfig
from finetune_opt.config.schema import SECTION_MODELS
from finetune_opt.errors import ConfigError
from finetune_opt.measure.config_block import FLAT_NAMES, LAYOUT, SECTIONS

PACKAGED = sorted(Path(packaged_configs.__file__).parent.glob("*.yaml"))


@pytest.fixture(scope="module")
def schema():
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["config-schema"]) == 0
    return json.loads(out.getvalue())


def test_the_schema_names_every_section_field_and_flat_key(schema):
    assert list(schema["properties"])[:len(SECTIONS) + 1] == ["task", *SECTIONS]
    for section, model in SECTION_MODELS.items():
        assert set(schema["$defs"][model.__name__]["properties"]) == set(model.model_fields)
    assert set(FLAT_NAMES) <= set(schema["properties"])
    assert "excluded from step-time statistics" in schema["$defs"]["MeasureSection"]["properties"][
        "timing_warmup_steps"]["description"]


@pytest.mark.parametrize("path", PACKAGED, ids=[p.stem for p in PACKAGED])
def test_every_packaged_config_validates(schema, path):
    jsonschema = pytest.importorskip("jsonschema")
    values = yaml.safe_load(path.read_text())
    jsonschema.validate(values, schema)
    assert set(values) <= {"task", *SECTIONS}, "packaged configs are written in sections"
    load_config(path.stem, [])


def test_the_layout_and_the_sections_agree():
    """Every section field has its flat name, and every flat name a section field (config_block,
    below the schema, is what reads old files)."""
    placed = {(s, f) for s, f in LAYOUT.values() if s is not None and f is not None}
    assert placed == {(s, f) for s, m in SECTION_MODELS.items() for f in m.model_fields}


def test_flat_dotted_and_sectioned_spellings_agree(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("task: sst2\nmax_steps: 20\nlr: 3.0e-5\noptimizer: lion\nbetas: [0.9, 0.95]\n")
    sectioned = tmp_path / "sectioned.yaml"
    sectioned.write_text("task: sst2\nloop: {max_steps: 20}\noptimizer: {name: lion, lr: 3.0e-5, betas: [0.9, 0.95]}\n")
    configs = [load_config(str(flat), []), load_config(str(sectioned), []),
               load_config(None, ["loop.max_steps=20", "optimizer.lr=3e-5", "optimizer=lion", "optimizer.betas=[0.9,0.95]"]),
               RunConfig(max_steps=20, lr=3e-5, optimizer="lion", optimizer_args={"betas": [0.9, 0.95]}),
               RunConfig(loop={"max_steps": 20}, optimizer={"name": "lion", "lr": 3e-5, "betas": [0.9, 0.95]})]
    assert all(c == configs[0] for c in configs)
    c = configs[0]
    assert (c.loop.max_steps, c.optimizer.name, c.optimizer.lr, c.optimizer.args) == (20, "lion", 3e-5, {"betas": [0.9, 0.95]})
    assert load_config(str(sectioned), ["max_steps=100"]).loop.max_steps == 100  # a flat override over a section


@pytest.mark.parametrize("overrides,message", [
    (["loop.max_stepz=3"], "unknown config key 'loop.max_stepz'; choose one of: loop.max_steps, loop.batch_size,"),
    (["max_steps=3", "loop.max_steps=4"], "the command line sets max_steps twice: max_steps=3 and loop.max_steps=4"),
    (["loop=3"], "loop must be a mapping of its settings, got 3"),
    (["loop={max_steps: true}"], "max_steps must be an integer, got True"),
])
def test_sectioned_input_is_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value).startswith(message)
