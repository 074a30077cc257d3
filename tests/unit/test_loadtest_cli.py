"""Option resolution: explicit option > preset > default; the seed protocol's exact settings."""

from __future__ import annotations

import pytest

from loadtest.cli import build_parser, resolve_configs, resolve_data, resolve_settings
from loadtest.protocols import SEED, SEED_CONFIGS


def parse(*argv: str):
    return build_parser().parse_args(["run", *argv])


def resolved(*argv: str):
    args = parse(*argv)
    proto = SEED if args.protocol == "seed" else None
    data = resolve_data(args, proto)
    return data, resolve_configs(args, proto), resolve_settings(args, proto, data)


def test_plain_defaults() -> None:
    data, configs, settings = resolved("--data", "x.jsonl")
    assert (data.split, data.limit, data.offset, data.shuffle, data.seed) == (
        "test",
        None,
        0,
        False,
        0,
    )
    assert [(c.name, c.method, c.body) for c in configs] == [("baseline", "baseline", {})]
    assert (settings.max_tokens, settings.temperature, settings.n) == (256, 0.0, 1)
    assert (settings.concurrency, settings.rate) == (8, None)
    assert (settings.answer_suffix, settings.extractor, settings.protocol) == (None, "auto", None)


def test_methods_and_params() -> None:
    _, configs, settings = resolved(
        "--methods",
        "baseline,rebase,wide",
        "--method-params",
        '{"rebase": {"rebase": {"width": 8}}, '
        '"wide": {"method": "rebase", "rebase": {"width": 32}, "n": 1}}',
        "--n",
        "4",
        "--rate",
        "2.5",
        "--answer-suffix",
        " So",
    )
    assert [(c.name, c.method, c.body) for c in configs] == [
        ("baseline", "baseline", {}),
        ("rebase", "rebase", {"rebase": {"width": 8}}),
        ("wide", "rebase", {"rebase": {"width": 32}, "n": 1}),
    ]
    assert (settings.n, settings.rate, settings.concurrency) == (4, 2.5, None)
    assert settings.extractor == "first_integer"  # the answer pass ends in a bare number


def test_unknown_params_are_an_error() -> None:
    with pytest.raises(SystemExit, match="not run: rebase"):
        resolved("--methods", "baseline", "--method-params", '{"rebase": {}}')
    with pytest.raises(SystemExit, match="JSON object"):
        resolved("--method-params", '{"baseline": 3}')


def test_seed_protocol() -> None:
    data, configs, settings = resolved("--protocol", "seed")
    assert (data.split, data.shuffle, data.seed, data.limit, data.offset) == (
        "test",
        True,
        42,
        128,
        0,
    )
    assert settings.temperature == 1.0
    assert settings.max_tokens == 384
    assert settings.answer_suffix == "\nTherefore, the answer (arabic numerals) is"
    assert settings.answer_max_tokens == 12
    assert settings.extractor == "seed"
    assert (settings.concurrency, settings.protocol) == (1, "seed")
    by_name = {c.name: c for c in configs}
    assert list(by_name) == list(SEED_CONFIGS)
    # the seed's stop strings: a second "Q:" and three newlines
    assert by_name["baseline"].body == {"n": 8, "stop": ["Q:", "\n\n\n"]}
    assert by_name["quiet_star"].body == {"n": 8, "stop": ["Q:", "\n\n\n"]}
    for width in (3, 6, 16):
        c = by_name[f"rebase w={width}"]
        assert c.method == "rebase" and c.answer_method == "baseline"
        assert c.body == {
            "rebase": {
                "width": width,
                "max_step_tokens": 96,
                "balance_temperature": 0.2,
                "step_format": "step_k",
                "first_step_header": False,  # the seed writes "Step k:" from step 2
            }
        }
    assert by_name["quiet_star+rebase"].method == "quiet_star+rebase"
    assert by_name["quiet_star+rebase"].body["rebase"]["width"] == 6  # the seed config's


def test_seed_rebase_rules_are_options() -> None:
    _, configs, _ = resolved(
        "--protocol", "seed", "--rebase-aggregation", "best_of_n", "--rebase-prune-score", "0.1"
    )
    for c in configs:
        rebase = c.body.get("rebase")
        if "rebase" in c.method:
            assert rebase["aggregation"] == "best_of_n" and rebase["prune_score"] == 0.1
        else:
            assert rebase is None
    _, configs, _ = resolved("--protocol", "seed")
    assert all("aggregation" not in (c.body.get("rebase") or {}) for c in configs)


def test_explicit_options_beat_the_preset() -> None:
    data, configs, settings = resolved(
        "--protocol",
        "seed",
        "--methods",
        "baseline,rebase",
        "--limit",
        "3",
        "--n",
        "2",
        "--max-tokens",
        "16",
        "--temperature",
        "0.5",
        "--concurrency",
        "4",
        "--method-params",
        '{"rebase w=3": {"rebase": {"width": 4}}}',
    )
    assert data.limit == 3 and data.seed == 42
    assert [c.name for c in configs] == ["baseline", "rebase w=3", "rebase w=6", "rebase w=16"]
    assert configs[0].body["n"] == 2
    assert configs[1].body["rebase"]["width"] == 4
    assert configs[1].body["rebase"]["max_step_tokens"] == 96  # merged, not replaced
    assert (settings.max_tokens, settings.temperature, settings.concurrency) == (16, 0.5, 4)
    assert settings.n == 1  # REBASE keeps one answer per request
    with pytest.raises(SystemExit, match="not a config of the seed protocol"):
        resolved("--protocol", "seed", "--methods", "beam")


def test_python_m_loadtest_runs_docs_and_the_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m loadtest docs` reaches loadtest/docs.py through the entry point (the replay's
    command line sits below the benchmarks and so cannot import it); the rest goes to cli.py."""
    import loadtest.__main__ as entry
    from loadtest import cli, docs

    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(docs, "main", lambda argv: calls.append(("docs", argv)) or 0)
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(("cli", argv)) or 0)
    assert entry.main(["docs", "--check"]) == 0
    assert entry.main(["--limit", "3"]) == 0
    assert calls == [("docs", ["--check"]), ("cli", ["--limit", "3"])]


def test_the_replay_command_line_points_docs_to_the_entry_point() -> None:
    from loadtest.cli import main

    with pytest.raises(SystemExit, match="python -m loadtest docs"):
        main(["docs", "--check"])


@pytest.mark.parametrize(
    ("flag", "block", "column"),
    [
        ("off", "off", "off"),
        ("exact", "exact", "exact"),
        ("c0.95", {"confidence": 0.95}, "confidence=0.95"),
    ],
)
def test_early_stop_flag_reaches_rebase_configs_and_the_table(flag, block, column) -> None:
    from loadtest.report import markdown_table
    from loadtest.runner import early_stop_setting
    from loadtest.summary import summarize

    _, configs, _ = resolved("--methods", "baseline,rebase", "--early-stop", flag)
    by_name = {c.name: c for c in configs}
    assert by_name["rebase"].body["rebase"]["early_stop"] == block
    assert "early_stop" not in (by_name["baseline"].body.get("rebase") or {})
    body = {"method": "rebase", **by_name["rebase"].body}
    assert early_stop_setting(body) == column
    assert early_stop_setting({"method": "baseline"}) is None
    assert early_stop_setting({"method": "rebase", "rebase": {}}) == "exact"  # the default
    from loadtest.records import Record

    rows = markdown_table(summarize([Record("rebase", "rebase", "p1", "1", early_stop=column)]))
    assert rows.splitlines()[2].startswith(f"| rebase | {column} |")


@pytest.mark.parametrize("bad", ["sometimes", "c1.5", "c", "c0.3"])
def test_bad_early_stop_flag_is_refused(bad) -> None:
    with pytest.raises(SystemExit):
        parse("--early-stop", bad)
