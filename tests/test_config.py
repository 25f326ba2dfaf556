import pytest

from induction_jax.config import ConfigError, RunConfig


@pytest.mark.parametrize("overrides, field", [
    ({"d_vocab": 1}, "d_vocab"),
    ({"d_model": 30, "n_heads": 4}, "d_model"),
    ({"seeds": 0}, "seeds"),
    ({"steps": 0}, "steps"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"half_length": 30}, "half_length"),          # 60 tokens do not fit n_ctx = 50
    ({"replace": False, "d_vocab": 10, "half_length": 20, "n_ctx": 40}, "half_length"),
    ({"n_layers": 0}, "n_layers"),
    ({"weight_decay": float("nan")}, "weight_decay"),
    ({"batch_size": 2.5}, "batch_size"),
])
def test_out_of_range_names_field_value_and_rule(overrides, field):
    with pytest.raises(ConfigError) as e:
        RunConfig().replace(**overrides)
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg
    assert "must" in msg


def test_defaults_are_the_reference():
    c = RunConfig()
    assert (c.model.d_vocab, c.task.half_length, c.model.n_ctx) == (64, 25, 50)
    assert (c.model.n_layers, c.model.n_heads, c.model.d_model, c.model.d_head) == (2, 4, 64, 16)
    assert c.model.attn_only and not c.model.layer_norm
    assert c.data.batch_size == 64
    assert c.train.lr == 1e-2    # deviates from the reference 1e-3; measured reasons in docs/task.md


def test_dict_round_trip_and_unknown_keys():
    c = RunConfig().replace(n_layers=1, lr=3e-3)
    assert RunConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown key 'n_layer'"):
        RunConfig.from_dict({"model": {"n_layer": 1}})
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        RunConfig.from_dict({"optim": {}})


def test_int_accepted_where_float_expected():
    assert RunConfig().replace(lr=1).train.lr == 1.0
