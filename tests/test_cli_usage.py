"""Usage errors answer from the subcommand's parser with a hint: the nearest flag for a typo, and
what to do when a flag is given several values. In-process, with no JAX needed."""

import pytest

from induction_jax.cli import main


@pytest.mark.parametrize("argv, hint", [
    (["train", "--sedds", "4"], "--sedds: did you mean --seeds?"),
    (["train", "--seeds", "4", "--eval-evry=5"], "--eval-evry=5: did you mean --eval-every?"),
    (["llc", "RUN", "--chians", "2"], "--chians: did you mean --chains?"),
    (["train", "--lr", "1e-3", "1e-2"], "1e-2: --lr takes one value; for several values run 'induction-jax sweep --lr A,B,...'"),
    (["sweep", "--lr", "1e-3", "1e-2"], "1e-2: --lr takes one value; give a list as one comma-separated value, e.g. --lr 1e-3,1e-2"),
])
def test_a_typo_or_a_list_gets_the_subcommands_usage_and_a_hint(capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"usage: induction-jax {argv[0]} ") and len(err) == 2
    assert err[1].startswith(f"induction-jax {argv[0]}: error: unrecognized arguments") and err[1].endswith(hint)


def test_an_unknown_flag_with_no_near_match_gets_no_false_hint(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--zzzz"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == "induction-jax train: error: unrecognized arguments: --zzzz"
