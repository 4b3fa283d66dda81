"""The README stays true: its config reference is generated from the schema, its commands exist."""

import re

from dynsac.config.reference import config_reference

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_config_reference_matches_schema():
    section = README.split("<!-- config-reference:start -->\n")[1].split("<!-- config-reference:end -->")[0]
    assert section == config_reference(), "regenerate with: python -m dynsac.config.reference --update README.md"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_metric_in_the_readme_is_listed_by_name():
    listed = set(re.findall(r"`((?:train|eval|perf|safety)/[a-z_]+)`", README))
    for name in ("train/policy_grad_norm", "train/q_grad_norm", "train/q_mean", "train/q_std", "eval/return_mean"):
        assert name in listed
