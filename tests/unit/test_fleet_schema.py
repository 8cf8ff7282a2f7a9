"""pd-fleet.yml (SPEC.md §11): finding the file, validation naming the key and the fix, templates,
triggers, cron schedules and backend argv."""

import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from fleet.backends import build_argv
from fleet.project import init_project, starter_text
from fleet.schema import FLEET_FILES, find_fleet_file, load_fleet, validate_data
from fleet.triggers import CronSchedule, cron_problem, matches, parse_trigger, scoped_channel
from fleet.variables import event_values, render, render_shell, trigger_context, variables_in


def project(tmp_path: Path, name: str = "demo") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True)
    return folder


def check(tmp_path: Path, data: dict, name: str = "demo"):
    folder = project(tmp_path, name)
    return validate_data(data, folder, folder / "pd-fleet.yml")


def errors(problems) -> dict[str, str]:
    return {p.key: str(p) for p in problems if p.level == "error"}


def agent(**kw) -> dict:
    return {"trigger": "git:committed", "backend": "custom", "prompt": "true", **kw}


def test_a_minimal_fleet_is_valid_with_defaults(tmp_path):
    spec, problems = check(tmp_path, {"fleet": {"name": "demo", "agents": {"qa": agent()}}})
    assert errors(problems) == {}
    qa = spec.agents["qa"]
    assert (spec.harbor, qa.identity, qa.max_respawns, qa.enabled, qa.singleton) == \
        ("demo:fleet", "demo:fleet:qa", 3, True, False)


def test_keys_may_sit_at_the_root_or_under_fleet(tmp_path):
    spec, problems = check(tmp_path, {"fleet": {"name": "demo", "agents": {"qa": agent()}},
                                      "channels": {"git:committed": {"consumers": ["qa"]}}})
    assert errors(problems) == {} and spec.channels["git:committed"].consumers == ["qa"]
    _, problems = check(tmp_path / "b", {"fleet": {"name": "demo", "agents": {}}, "agents": {}})
    assert "agents" in errors(problems)


def test_name_must_equal_the_folder_and_the_error_says_so(tmp_path):
    _, problems = check(tmp_path, {"name": "other", "agents": {"qa": agent()}})
    message = errors(problems)["name"]
    assert "project folder" in message and "set name: demo" in message


@pytest.mark.parametrize("agent_fields,key,words", [
    ({"backend": "claud"}, "agents.qa.backend", "did you mean 'claude-cli'"),
    ({"prompt": "review {comit}"}, "agents.qa.prompt", "did you mean {commit}"),
    ({"schedule": "61 * * * *"}, "agents.qa.schedule", "not a valid cron"),
    ({"schedule": "* * * *"}, "agents.qa.schedule", "five"),
    ({"trigger": 'tuple:["task", '}, "agents.qa.trigger", "not JSON"),
    ({"trigger": "tuple:[\">x\"]"}, "agents.qa.trigger", "position"),
    ({"on_success": "notify qa:done"}, "agents.qa.on_success", "publish CHANNEL"),
    ({"timeout": "soon"}, "agents.qa.timeout", "10m"),
    ({"max_respawns": -1}, "agents.qa.max_respawns", ">= 0"),
    ({"singleton": "yes"}, "agents.qa.singleton", "true or false"),
    ({"identity": "a:b:c:d"}, "agents.qa.identity", "project[:stack[:context]]"),
    ({"backend": "ollama"}, "agents.qa.model", "required for backend ollama"),
    ({"promtp": "x"}, "agents.qa.promtp", "did you mean 'prompt'"),
    ({"env": {"X": "{nope}"}}, "agents.qa.env.X", "unknown template variable {nope}"),
])
def test_each_agent_problem_names_the_key_and_the_fix(tmp_path, agent_fields, key, words):
    _, problems = check(tmp_path, {"name": "demo", "agents": {"qa": agent(**agent_fields)}})
    found = errors(problems)
    assert key in found, found
    assert words in found[key] and "Fix:" in found[key]


def test_an_agent_that_can_never_run_is_an_error(tmp_path):
    _, problems = check(tmp_path, {"name": "demo", "agents": {"qa": {"backend": "custom", "prompt": "true"}}})
    assert "neither trigger nor schedule" in errors(problems)["agents.qa"]


def test_on_success_chains_forming_a_cycle_are_refused(tmp_path):
    data = {"name": "demo", "agents": {
        "a": agent(trigger="start", on_success="publish b:go"),
        "b": agent(trigger="b:go", on_success="publish c:go"),
        "c": agent(trigger="c:*", on_failure="publish start"),
        "d": agent(trigger="b:go"),
    }}
    _, problems = check(tmp_path, data)
    message = errors(problems)["agents"]
    assert "cycle: a -> b -> c -> a" in message and "break the chain" in message
    data["agents"]["c"]["on_failure"] = "publish done"
    _, problems = check(tmp_path / "2", data)
    assert errors(problems) == {}


def test_channels_consumers_must_be_agents(tmp_path):
    _, problems = check(tmp_path, {"name": "demo", "agents": {"qa": agent()},
                                   "channels": {"git:committed": {"consumers": ["qa", "ghost"]}}})
    assert "'ghost' is not an agent" in errors(problems)["channels.git:committed.consumers"]


def test_unknown_top_level_keys_get_a_suggestion(tmp_path):
    _, problems = check(tmp_path, {"name": "demo", "agnets": {}})
    assert "did you mean 'agents'" in errors(problems)["agnets"]


def test_harbor_template_and_unknown_variables(tmp_path):
    spec, problems = check(tmp_path, {"name": "demo", "harbor": "{project}:bots", "agents": {"qa": agent()}})
    assert spec.harbor == "demo:bots"
    _, problems = check(tmp_path / "2", {"name": "demo", "harbor": "{branch}:bots", "agents": {"qa": agent()}})
    assert "unknown template variable {branch}" in errors(problems)["harbor"]


def test_watchers_run_a_command_per_message(tmp_path):
    spec, problems = check(tmp_path, {"name": "demo", "agents": {"qa": agent()},
                                      "watchers": {"log": {"trigger": "qa:done", "exec": "echo {message}"}}})
    assert errors(problems) == {}
    watcher = spec.watchers["log"]
    assert (watcher.kind, watcher.backend, watcher.trigger.channel) == ("watcher", "custom", "qa:done")


def test_a_watchers_only_fleet_is_not_warned_about_doing_nothing(tmp_path):
    spec, problems = check(tmp_path, {"name": "demo",
                                      "watchers": {"log": {"trigger": "qa:done", "exec": "echo {message}"}}})
    assert errors(problems) == {} and list(spec.watchers) == ["log"]
    assert [p for p in problems if p.level == "warning" and p.key == "agents"] == []
    _, problems = check(tmp_path / "b", {"name": "demo"})
    assert [p.message for p in problems if p.level == "warning" and p.key == "agents"] == \
        ["no agents or watchers are declared, so the fleet does nothing"]


def test_the_file_is_the_first_of_the_known_names(tmp_path):
    folder = project(tmp_path)
    assert find_fleet_file(folder) is None
    (folder / ".portdaddy").mkdir()
    (folder / ".portdaddy" / "fleet.yaml").write_text("name: demo\n")
    assert find_fleet_file(folder).name == "fleet.yaml"
    (folder / "pd-fleet.yaml").write_text("name: demo\n")
    assert find_fleet_file(folder).name == "pd-fleet.yaml"
    assert FLEET_FILES[0] == "pd-fleet.yml"
    result = load_fleet(folder / ".portdaddy" / "fleet.yaml")
    assert result.project_dir == folder.resolve()


def test_bad_yaml_says_where(tmp_path):
    folder = project(tmp_path)
    (folder / "pd-fleet.yml").write_text("fleet:\n  name: demo\n   agents: [\n")
    result = load_fleet(folder)
    assert not result.ok and "line" in str(result.errors[0])


def test_the_starter_template_is_valid_and_has_the_five_agents(tmp_path):
    folder = project(tmp_path, "shop")
    (folder / "pd-fleet.yml").write_text(starter_text("shop"))
    result = load_fleet(folder)
    assert result.ok, [str(p) for p in result.errors]
    assert set(result.spec.agents) == {"qa", "documentarian", "cartographer", "spark", "spider"}
    assert result.spec.name == "shop" and result.spec.harbor == "shop:fleet"
    assert result.spec.agents["spider"].trigger.kind == "tuple"
    assert yaml.safe_load(starter_text("shop"))["fleet"]["harbor"] == "{project}:fleet"


def test_init_writes_the_starter_named_after_the_folder_and_keeps_an_existing_file(tmp_path):
    folder = project(tmp_path, "shop")
    first = init_project(folder, hook=False)
    assert first.file_action == "written" and "name: shop" in first.file.read_text()
    first.file.write_text("name: shop\nagents: {}\n")
    again = init_project(folder, hook=False)
    assert again.file_action == "kept" and first.file.read_text() == "name: shop\nagents: {}\n"
    assert init_project(folder, hook=False, force=True).file_action == "overwritten"
    with pytest.raises(ValueError):
        init_project(project(tmp_path, "bad name"), hook=False)


# -- templates -----------------------------------------------------------------------------
def test_templates_fill_variables_and_leave_shell_syntax_alone():
    text = "review {commit} on {branch} ${HOME} {{literal}} awk '{print $1}'"
    assert variables_in(text) == ["commit", "branch"]
    assert render(text, {"commit": "abc", "branch": "main"}) == "review abc on main ${HOME} {literal} awk '{print $1}'"


@pytest.mark.parametrize("template", [
    "echo {message}",
    'echo "{message}"',
    "echo '{message}'",
    "echo \\\"{message}\\\"",
])
def test_custom_commands_never_let_a_value_reach_the_shell_parser(tmp_path, template):
    evil = f"x\"; touch {tmp_path}/a; echo \"$(touch {tmp_path}/b)' `touch {tmp_path}/c`"
    command, env = render_shell(template, {"message": evil})
    assert evil not in command and env == {"PD_VAR_MESSAGE": evil}
    out = subprocess.run(["/bin/sh", "-c", command], env={**os.environ, **env}, capture_output=True, text=True)
    assert evil in out.stdout and list(tmp_path.iterdir()) == []


def test_custom_commands_keep_shell_syntax():
    command, env = render_shell("awk '{print $1}' ${HOME} {{x}} {commit}", {"commit": "abc"})
    assert command == "awk '{print $1}' ${HOME} {x} \"${PD_VAR_COMMIT}\"" and env == {"PD_VAR_COMMIT": "abc"}


def test_git_events_give_commit_and_changed_files_and_a_trigger_context():
    values = event_values("git:committed", {"commit": "abc123", "branch": "main", "changed_files": ["a.py", "b.py"]},
                          "git")
    assert render("{commit}: {changed_files} ({channel} from {sender})", values) == \
        "abc123: a.py b.py (git:committed from git)"
    context = trigger_context(values)
    assert "--- trigger context ---" in context and "commit: abc123" in context and "changed files: a.py b.py" in context


# -- triggers and schedules ----------------------------------------------------------------
def test_fleet_channels_are_scoped_to_the_harbor_except_system_ones():
    assert scoped_channel("demo:fleet", "git:committed") == "demo:fleet:git:committed"
    assert scoped_channel("demo:fleet", "pd:agents") == "pd:agents"
    trig = parse_trigger("qa:*")
    assert matches(trig, "demo:fleet", "demo:fleet:qa:done", "x")
    assert not matches(trig, "demo:fleet", "other:fleet:qa:done", "x")


def test_tuple_triggers_match_new_tuples_of_the_harbor():
    trig = parse_trigger('tuple:["task", "*", ">0.5"]')
    assert trig.real_channel("demo:fleet") == "tuple:demo:fleet"
    out = {"event": "tuple.out", "tuple": {"fields": ["task", "build", 0.9]}}
    assert matches(trig, "demo:fleet", "tuple:demo:fleet", out)
    assert not matches(trig, "demo:fleet", "tuple:demo:fleet", {"event": "tuple.out", "tuple": {"fields": ["task"]}})
    assert not matches(trig, "demo:fleet", "tuple:demo:fleet", {"event": "tuple.in", "ids": [1]})
    assert not matches(trig, "demo:fleet", "tuple:other", out)


def epoch(*fields: int) -> float:
    return datetime(*fields).astimezone().timestamp()  # local time, as cron reads it


def test_every_minute_fires_at_the_next_minute_boundary():
    cron = CronSchedule("* * * * *")
    assert cron.next_after(epoch(2030, 1, 15, 12, 0, 30)) == epoch(2030, 1, 15, 12, 1, 0)
    assert cron.next_after(epoch(2030, 1, 15, 12, 1, 0)) == epoch(2030, 1, 15, 12, 2, 0)


def test_cron_fields_are_honoured():
    assert CronSchedule("*/10 * * * *").next_after(epoch(2030, 1, 15, 12, 3)) == epoch(2030, 1, 15, 12, 10)
    weekday_nine = CronSchedule("0 9 * * 1-5")  # 2030-01-19 is a Saturday
    assert weekday_nine.next_after(epoch(2030, 1, 18, 10, 0)) == epoch(2030, 1, 21, 9, 0)
    assert CronSchedule("@hourly").next_after(epoch(2030, 1, 15, 12, 59, 59)) == epoch(2030, 1, 15, 13, 0)
    assert cron_problem("*/10 * * * *") is None and cron_problem("@sometimes")


# -- backends ------------------------------------------------------------------------------
def test_backends_build_their_argv():
    assert build_argv("claude-cli", "do it", None, "Read,Grep") == ["claude", "-p", "do it", "--allowedTools",
                                                                    "Read,Grep"]
    assert build_argv("claude", "x", "opus") == ["claude", "-p", "x", "--model", "opus"]
    assert build_argv("gemini", "x", "flash") == ["gemini", "-p", "x", "-m", "flash"]
    assert build_argv("aider", "x", None, None, ["a.py"]) == ["aider", "--message", "x", "a.py"]
    assert build_argv("ollama", "x", "llama3.2") == ["ollama", "run", "llama3.2", "x"]
    assert build_argv("custom", "echo hi && exit 3") == ["/bin/sh", "-c", "echo hi && exit 3"]
    with pytest.raises(ValueError):
        build_argv("ollama", "x")
