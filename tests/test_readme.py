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
