"""``torchkron plan``: the table and JSON of a layer's factorisations, and the CLI's checks.

The search itself is tested in tests/factorization/test_candidates.py.
"""

from __future__ import annotations

import json

import pytest

from torchkron.experiments.cli import main
from torchkron.experiments.commands.plan import format_plan
from torchkron.factorization.candidates import layer_candidates


def test_format_plan_table():
    # 12 = 2^2 * 3 splits as 6*2 or 4*3, 6 as 3*2: four pairings, checked by hand.
    text = format_plan(layer_candidates(12, 6, 2))
    assert text.splitlines() == [
        "12 -> 6 (12 = 2^2 * 3, 6 = 2 * 3): dense 72 weights, 144 FLOPs/sample; rank 1, "
        "untied; 1..2 factors, 5 factorisation(s), sorted by weights.",
        "",
        "k  factor shapes (out x in)  weights  FLOPs/sample  compression  tieable  default",
        "2  3x3 (x) 2x4                    17            84         4.2x       no",
        "2  3x2 (x) 2x6                    18            72         4.0x       no",
        "2  3x4 (x) 2x3                    18            96         4.0x       no        *",
        "2  3x6 (x) 2x2                    22            96         3.3x       no",
        "1  6x12                           72           144         1.0x      yes        *",
        "",
        "k = 1 is the dense layer itself. * marks the balanced default of "
        "KronLinear(num_factors=k) for that k.",
    ]


def test_cli_plan_text_and_json(capsys):
    assert main(["plan", "784", "625", "--factors", "2"]) == 0
    out = capsys.readouterr().out
    assert (
        "2  25x28 (x) 25x28             1,400        74,200       350.0x      yes        *"
        in out.splitlines()
    )
    assert main(["plan", "784", "625", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["rows"]) == 54
    assert data["rows"][0]["shapes"] == [[5, 7], [5, 7], [5, 4], [5, 4]]
    assert data["rows"][0]["factors"] == 4


def test_cli_plan_rejects_too_many_factors(capsys):
    assert main(["plan", "16", "16", "--factors", "9"]) == 2
    assert capsys.readouterr().err == "torchkron plan: error: --factors must be at most 8, got 9.\n"
    with pytest.raises(SystemExit):
        main(["plan", "0", "16"])
    assert "argument IN: must be at least 1, got 0" in capsys.readouterr().err


def test_highly_composite_sizes_are_counted_and_the_best_shown(capsys):
    assert main(["plan", "720720", "720720", "--top", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "720720 -> 720720 (720720 = 2^4 * 3^2 * 5 * 7 * 11 * 13, 720720 = 2^4 * 3^2 * 5 * 7 "
        "* 11 * 13): dense 519,437,318,400 weights, 1,038,874,636,800 FLOPs/sample; rank 1, "
        "untied; 1..4 factors, 166,782,267 factorisations, showing the best 2 by weights "
        "(--top M for more, --factors K for fewer factors).",
        "",
        "k  factor shapes (out x in)             weights  FLOPs/sample     compression  "
        "tieable  default",
        "4  429x2 (x) 420x2 (x) 2x429 (x) 2x420    3,396     5,792,640  152,955,629.7x       no",
        "4  429x2 (x) 280x3 (x) 3x280 (x) 2x429    3,396     5,806,080  152,955,629.7x       no",
        "",
        "k = 1 is the dense layer itself. * marks the balanced default of "
        "KronLinear(num_factors=k) for that k.",
    ]
    assert main(["plan", "720720", "720720"]) == 0  # default --top 100
    assert len(capsys.readouterr().out.splitlines()) == 2 + 1 + 100 + 2
    assert main(["plan", "720720", "720720", "--all"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "--all would list 166,782,267 factorisations (at most 100,000); use --top M for the "
            "M cheapest, or fewer --factors."
        )
    )


def test_largest_32_bit_sizes_answer_on_the_command_line(capsys):
    assert main(["plan", str(2**31 - 1), str(2**31 - 1)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("1..4 factors, 1 factorisation(s), sorted by weights.")
    assert lines[-1] == (
        "out_features 2147483647 (prime) splits into at most 1 factor(s) > 1; nearest sizes "
        "that split into 2: 2147483645 = 5 * 19 * 22605091, 2147483646 = 2 * 3^2 * 7 * 11 * "
        "31 * 151 * 331, 2147483648 = 2^31."
    )
    assert main(["plan", str(2**32 + 1), "16"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("IN must be at most 2**32 = 4,294,967,296, got 4,294,967,297.")
    )
