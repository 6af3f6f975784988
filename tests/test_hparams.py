"""PruningHParams: TF defaults, the three ways to build it, validation, printing."""

import dataclasses
import re

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


def _did_you_mean(message):
    """The names after "did you mean", or [] when the message suggests none."""
    m = re.search(r"did you mean (.*?)\?", message)
    return re.findall(r"'(\w+)'", m.group(1)) if m else []


@pytest.mark.parametrize(
    "name, suggested",
    [
        ("sparsity_target", ["target_sparsity"]),  # the same words in another order
        ("Target_Sparsity", ["target_sparsity"]),  # another case
        ("target_sparisty", ["target_sparsity"]),  # a typo
        ("pruning_frequence", ["pruning_frequency"]),
        ("scope", ["pruning_scope"]),  # one word of a field's name
        ("exponent", ["sparsity_function_exponent"]),
        ("bogus", []),  # nothing close: no guess
    ],
)
def test_unknown_name_suggests_the_closest_fields(name, suggested):
    for build in (
        lambda: jaxprune.get_pruning_hparams().replace(**{name: 0.5}),
        lambda: jaxprune.PruningHParams.from_dict({name: 0.5}),
        lambda: jaxprune.get_pruning_hparams().parse(f"{name}=0.5"),
    ):
        with pytest.raises(ValueError) as err:
            build()
        message = str(err.value)
        assert f"Unknown hparam '{name}'" in message
        assert _did_you_mean(message) == suggested, message
        assert "known hparams" in message.lower() and "'use_tpu'" in message  # all listed


@pytest.mark.parametrize(
    "build, hint",
    [
        (lambda hp: hp.replace(target_sparsity=90), "0.9 for 90 %"),
        (lambda hp: hp.parse("target_sparsity=80"), "0.8 for 80 %"),
        (lambda hp: hp.replace(initial_sparsity=50.0), "0.5 for 50 %"),
        (lambda hp: hp.parse("weight_sparsity_map=[conv1:75]"), "0.75 for 75 %"),
        (lambda hp: hp.replace(target_sparsity=100), "0.9 for 90 %"),  # not a likely percentage
        (lambda hp: hp.replace(target_sparsity=1.0), "0.9 for 90 %"),
    ],
)
def test_sparsity_given_as_a_percentage_says_fraction(build, hint):
    with pytest.raises(ValueError) as err:
        build(jaxprune.get_pruning_hparams())
    assert "must be in [0, 1)" in str(err.value) and f"a fraction, e.g. {hint}" in str(err.value)


@pytest.mark.parametrize(
    "kwargs", [{"target_sparsity": -0.5}, {"target_sparsity": float("nan")}, {"threshold_decay": 5}]
)
def test_no_percentage_hint_where_it_cannot_be_one(kwargs):
    with pytest.raises(ValueError) as err:
        jaxprune.get_pruning_hparams().replace(**kwargs)
    assert "must be in [0, 1)" in str(err.value) and "fraction" not in str(err.value)


def test_print_hparams_prints_one_field_per_line_and_returns_none(capsys):
    hp = jaxprune.get_pruning_hparams().parse("name=test,block_dims_map=[dense1:4x4]")
    assert jaxprune.print_hparams(hp) is None  # like print: a notebook shows the text once
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == str(hp).splitlines()
    assert len(printed) == len(TF_DEFAULTS)
    assert "name=test" in printed and "block_dims_map=[dense1:4x4]" in printed
    assert "target_sparsity=0.5" in printed
    assert jaxprune.Pruning(hp).print_hparams() is None
    assert capsys.readouterr().out.strip().splitlines() == printed


def test_printed_lines_parse_back_to_the_same_hparams():
    """print_hparams' lines are TF HParams syntax: joined with commas they parse back."""
    hp = jaxprune.get_pruning_hparams().parse(
        "name=x,weight_sparsity_map=[conv{1,2}:0.8,d:0.5],sparsity_axis=-1,use_tpu=true"
    )
    text = ",".join(line for line in str(hp).splitlines())
    assert jaxprune.get_pruning_hparams().parse(text) == hp


def test_weight_sparsity_map_two_matches_is_an_error():
    hp = jaxprune.get_pruning_hparams().parse("weight_sparsity_map=[conv:0.8,kernel:0.7]")
    with pytest.raises(ValueError, match="conv1/kernel"):
        hp.sparsity_for("conv1/kernel")
    assert hp.sparsity_for("conv1/bias") == 0.8
