"""jobs/reprocess.py without services: its chunk plan, its counts and its command line."""

from __future__ import annotations

from collections import Counter

import pytest

from common.env import Env
from common.pipeline import PipelineNames
from jobs.reprocess import Chunk, Counts, build_parser, plan_chunks, settings_from_args


def test_chunks_cover_each_partition_s_offsets_once_in_pieces_of_at_most_chunk_rows():
    assert plan_chunks({1: (10, 35), 0: (0, 20)}, 10) == [
        Chunk(0, 0, 0, 10), Chunk(1, 0, 10, 20), Chunk(2, 1, 10, 20), Chunk(3, 1, 20, 30), Chunk(4, 1, 30, 35)]
    assert plan_chunks({}, 10) == []
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        plan_chunks({0: (0, 5)}, 0)


def test_counts_add_up_and_survive_the_run_log_round_trip():
    a = Counts(added=Counter(OK=3), reclassified=Counter({"OK->WARNING": 2}), unchanged=5)
    b = Counts(added=Counter(OK=1, CRITICAL=1), removed=Counter(WARNING=1), unchanged=2, kept_outside_range=1)
    a.add(b)
    assert a.as_json() == {"added": {"CRITICAL": 1, "OK": 4}, "removed": {"WARNING": 1},
                           "reclassified": {"OK->WARNING": 2}, "updated": {}, "unchanged": 7, "kept_outside_range": 1,
                           "promoted": {}, "newly_quarantined": {}, "reasons_changed": 0}
    assert Counts.from_json(a.as_json()) == a
    report = a.report()
    assert "  added                      5   CRITICAL 1, OK 4" in report
    assert "  reclassified               2   OK->WARNING 2" in report


def parse(*argv: str):
    env = Env()
    parser = build_parser(PipelineNames.from_env(env))
    return settings_from_args(parser, parser.parse_args(list(argv)), env)


def test_empty_values_are_not_given_as_the_dag_passes_unset_params():
    s = parse("--from", "", "--to", "", "--as-of", "", "--dry-run=false", "--topic", "", "--pg-schema", "")
    assert (s.from_date, s.to_date, s.as_of, s.dry_run) == (None, None, None, False)
    assert s.names == PipelineNames.from_env(Env())
    assert parse("--dry-run").dry_run is True


@pytest.mark.parametrize(("argv", "message"), [
    (["--chunk-rows", "0"], "--chunk-rows must be between 1 and 100,000"),
    (["--chunk-rows", "100001"], "--chunk-rows must be between 1 and 100,000"),
    (["--from", "2026-12-02", "--to", "2026-12-01"], "--from 2026-12-02 is after --to 2026-12-01"),
    (["--from", "yesterday"], "argument --from: invalid optional_date value: 'yesterday'"),
    (["--dry-run=maybe"], "argument --dry-run: invalid true_or_false value: 'maybe'"),
    (["--pg-schema", "mine"], "all or nothing: --pg-schema given, but not --topic, --bronze-path, --quarantine-path, "
                              "--query-name"),
])
def test_a_bad_argument_exits_2_naming_it(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
