"""PruningHParams: TF defaults, the three ways to build it, validation, printing."""

import dataclasses

import pytest

import jaxprune

TF_DEFAULTS = {  # TF r1.15 get_pruning_hparams(), plus jaxprune's fields that default to TF
    "name": "model_pruning",
    "begin_pruning_step": 0,
    "end_pruning_step": -1,
    "weight_sparsity_map": [],
    "block_dims_map": [],
    "threshold_decay": 0.0,
    "pruning_frequency": 10,
    "nbins": 256,
    "block_height": 1,
    "block_width": 1,
    "block_pooling_function": "AVG",
    "initial_sparsity": 0.0,
    "target_sparsity": 0.5,
    "sparsity_function_begin_step": 0,
    "sparsity_function_end_step": 100,
    "sparsity_function_exponent": 3.0,
    "use_tpu": False,
    "threshold_method": "exact",
    "pruning_scope": "layer",
    "sparsity_distribution": "uniform",
    "sparsity_type": "unstructured",
    "sparsity_axis": None,
    "owl_m": 5.0,  # OWL's (used only with sparsity_distribution="owl")
    "owl_lambda": 0.08,
    "owl_groups": None,
}


def test_defaults_are_tf_r115():
    assert jaxprune.get_pruning_hparams().to_dict() == TF_DEFAULTS


def test_frozen():
    hp = jaxprune.get_pruning_hparams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.target_sparsity = 0.9


def test_parse_tf_string():
    hp = jaxprune.get_pruning_hparams().parse(
        "name=test,target_sparsity=0.9,"
        "weight_sparsity_map=[conv1:0.8,conv2/kernel:0.8],block_dims_map=[dense1:4x4]"
    )
    assert hp.name == "test"
    assert hp.target_sparsity == 0.9
    assert hp.weight_sparsity_map == ("conv1:0.8", "conv2/kernel:0.8")
    assert hp.block_dims_map == ("dense1:4x4",)
    assert hp.pruning_frequency == 10  # untouched fields keep their defaults


def test_parse_types_whitespace_and_empty_lists():
    hp = jaxprune.get_pruning_hparams().parse(
        " begin_pruning_step = 5 , end_pruning_step=-1, use_tpu=true, "
        "threshold_decay=0.25, weight_sparsity_map=[], sparsity_function_exponent=1"
    )
    assert hp.begin_pruning_step == 5 and isinstance(hp.begin_pruning_step, int)
    assert hp.use_tpu is True
    assert hp.threshold_decay == 0.25
    assert hp.weight_sparsity_map == ()
    assert hp.sparsity_function_exponent == 1.0 and isinstance(hp.sparsity_function_exponent, float)


def test_parse_regex_with_brackets_and_commas():
    hp = jaxprune.get_pruning_hparams().parse("weight_sparsity_map=[conv[12]:0.8,dense{1,2}:0.7]")
    assert hp.weight_sparsity_map == ("conv[12]:0.8", "dense{1,2}:0.7")
    assert hp.sparsity_for("model/conv2/kernel") == 0.8
    assert hp.sparsity_for("dense1") == 0.7


def test_parse_does_not_modify_original():
    hp = jaxprune.get_pruning_hparams()
    hp.parse("target_sparsity=0.9")
    assert hp.target_sparsity == 0.5


def test_replace_and_dict_round_trip():
    hp = jaxprune.get_pruning_hparams().replace(
        target_sparsity=0.8, weight_sparsity_map=["a:0.5"], nbins=10
    )
    assert hp.weight_sparsity_map == ("a:0.5",)
    again = jaxprune.PruningHParams.from_dict(hp.to_dict())
    assert again == hp
    assert jaxprune.PruningHParams.from_dict({"nbins": 3}).nbins == 3


def test_float_fields_accept_ints():
    assert jaxprune.get_pruning_hparams().replace(sparsity_function_exponent=2).to_dict()[
        "sparsity_function_exponent"
    ] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"begin_pruning_step": -1}, "begin_pruning_step", "-1"),
        ({"end_pruning_step": 0}, "end_pruning_step", "0"),
        ({"begin_pruning_step": 10, "end_pruning_step": 10}, "end_pruning_step", "10"),
        ({"end_pruning_step": -2}, "end_pruning_step", "-2"),
        ({"sparsity_function_begin_step": -1}, "sparsity_function_begin_step", "-1"),
        ({"sparsity_function_end_step": 0}, "sparsity_function_end_step", "0"),
        (
            {"sparsity_function_begin_step": 50, "sparsity_function_end_step": 50},
            "sparsity_function_end_step",
            "50",
        ),
        ({"threshold_decay": 1.0}, "threshold_decay", "1.0"),
        ({"threshold_decay": -0.1}, "threshold_decay", "-0.1"),
        ({"initial_sparsity": 1.0}, "initial_sparsity", "1.0"),
        ({"target_sparsity": 1.0}, "target_sparsity", "1.0"),
        ({"target_sparsity": -0.5}, "target_sparsity", "-0.5"),
        ({"target_sparsity": float("nan")}, "target_sparsity", "nan"),
        ({"pruning_frequency": 0}, "pruning_frequency", "0"),
        ({"nbins": 0}, "nbins", "0"),
        ({"block_height": 0}, "block_height", "0"),
        ({"block_width": -2}, "block_width", "-2"),
        ({"block_pooling_function": "SUM"}, "block_pooling_function", "SUM"),
        ({"threshold_method": "sort"}, "threshold_method", "sort"),
        ({"sparsity_function_exponent": -1.0}, "sparsity_function_exponent", "-1.0"),
        ({"weight_sparsity_map": ["conv1"]}, "weight_sparsity_map", "conv1"),
        ({"weight_sparsity_map": ["conv1:1.0"]}, "weight_sparsity_map", "1.0"),
        ({"weight_sparsity_map": ["conv1:abc"]}, "weight_sparsity_map", "abc"),
        ({"weight_sparsity_map": ["conv(1:0.5"]}, "weight_sparsity_map", "conv(1"),
        ({"weight_sparsity_map": [":0.5"]}, "weight_sparsity_map", ":0.5"),
        ({"block_dims_map": ["dense1:4"]}, "block_dims_map", "4"),
        ({"block_dims_map": ["dense1:4x0"]}, "block_dims_map", "0"),
        ({"block_dims_map": ["dense1:axb"]}, "block_dims_map", "a"),
        ({"block_dims_map": ["dense[:4x4"]}, "block_dims_map", "dense["),
    ],
)
def test_invalid_values_name_field_and_value(kwargs, field, value):
    with pytest.raises(ValueError) as err:
        jaxprune.get_pruning_hparams().replace(**kwargs)
    assert field in str(err.value) and value in str(err.value)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"pruning_frequency": 1.5}, "pruning_frequency"),
        ({"pruning_frequency": True}, "pruning_frequency"),
        ({"target_sparsity": "0.5"}, "target_sparsity"),
        ({"name": 3}, "name"),
        ({"use_tpu": 1}, "use_tpu"),
        ({"weight_sparsity_map": "conv1:0.5"}, "weight_sparsity_map"),
        ({"block_dims_map": [1]}, "block_dims_map"),
    ],
)
def test_wrong_types(kwargs, field):
    with pytest.raises(ValueError, match=field):
        jaxprune.get_pruning_hparams().replace(**kwargs)


@pytest.mark.parametrize(
    "text, match",
    [
        ("target_sparsity=0.9,bogus=1", "bogus"),
        ("pruning_frequency=1.5", "pruning_frequency"),
        ("target_sparsity=abc", "target_sparsity"),
        ("use_tpu=maybe", "use_tpu"),
        ("target_sparsity=0.5,target_sparsity=0.6", "target_sparsity"),
        ("weight_sparsity_map=conv1:0.8", "weight_sparsity_map"),
        ("target_sparsity=[0.5]", "target_sparsity"),
        ("weight_sparsity_map=[conv1:0.8", "Unbalanced"),
        ("target_sparsity", "target_sparsity"),
        ("target_sparsity=1.5", "target_sparsity"),
        ("block_dims_map=[dense1:4x4x4]", "block_dims_map"),
    ],
)
def test_parse_errors(text, match):
    with pytest.raises(ValueError, match=match):
        jaxprune.get_pruning_hparams().parse(text)


def test_unknown_names_in_replace_and_dict():
    with pytest.raises(ValueError, match="sparsity_target"):
        jaxprune.get_pruning_hparams().replace(sparsity_target=0.5)
    with pytest.raises(ValueError, match="sparsity_target"):
        jaxprune.PruningHParams.from_dict({"sparsity_target": 0.5})


def test_print_hparams_one_field_per_line(capsys):
    hp = jaxprune.get_pruning_hparams().parse("name=test,block_dims_map=[dense1:4x4]")
    text = jaxprune.print_hparams(hp)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == text.splitlines() == str(hp).splitlines()
    assert len(printed) == len(TF_DEFAULTS)
    assert "name=test" in printed and "block_dims_map=[dense1:4x4]" in printed
    assert "target_sparsity=0.5" in printed


def test_weight_sparsity_map_two_matches_is_an_error():
    hp = jaxprune.get_pruning_hparams().parse("weight_sparsity_map=[conv:0.8,kernel:0.7]")
    with pytest.raises(ValueError, match="conv1/kernel"):
        hp.sparsity_for("conv1/kernel")
    assert hp.sparsity_for("conv1/bias") == 0.8
