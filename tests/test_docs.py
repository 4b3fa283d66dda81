"""The docs stay true: the site builds with --strict (no broken link, anchor or API reference), the
config reference is generated from the schema, the README is short and its links and commands work."""

import os
import re
import shlex
import subprocess
import sys

from dynsac.cli import build_parser
from dynsac.config import load_config
from dynsac.config.reference import config_reference

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
DOCS = REPO_ROOT / "docs"
PAGES = {path.name: path.read_text() for path in sorted(DOCS.glob("*.md"))}


def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_config_reference_matches_schema():
    page = PAGES["configs.md"]
    section = page.split("<!-- config-reference:start -->\n")[1].split("<!-- config-reference:end -->")[0]
    assert section == config_reference(), "regenerate with: python -m dynsac.config.reference --update docs/configs.md"


def test_readme_is_short():
    lines = len(README.splitlines())
    assert lines < 300, f"README.md has {lines} lines; move details to docs/"


def test_readme_relative_links_point_at_existing_files():
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]
    assert relative, "the README links to the docs pages"
    missing = [t for t in relative if not (REPO_ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (REPO_ROOT / ".ci" / "run").read_text()


def test_every_metric_in_the_docs_is_listed_by_name():
    listed = set(re.findall(r"`((?:train|eval|perf|safety)/[a-z_]+)`", PAGES["metrics.md"]))
    for name in ("train/policy_grad_norm", "train/q_grad_norm", "train/q_mean", "train/q_std", "eval/return_mean"):
        assert name in listed


def _dynsac_commands(text):
    """Every `dynsac ...` command line in the ```bash blocks of a Markdown text (continuations joined)."""
    for block in re.findall(r"```bash\n(.*?)\n```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("dynsac "):
                yield line


def test_documented_dynsac_commands_parse_and_their_configs_load():
    commands = [c for text in (README, *PAGES.values()) for c in _dynsac_commands(text)]
    assert len(commands) > 10
    parser = build_parser()
    for command in commands:
        try:
            args = parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            raise AssertionError(f"documented command does not parse: {command}") from None
        if getattr(args, "config", None):
            files = [REPO_ROOT / name for name in ([args.config] if isinstance(args.config, str) else args.config)]
            assert all(file.exists() for file in files), command
            load_config(files, args.overrides)
