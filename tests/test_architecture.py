"""Architecture specs (symnet.app.architecture): validation, the models they build, round trips."""

from __future__ import annotations

import numpy as np
import pytest

import symnet as sn
from symnet.app.architecture import ACTIVATIONS, LOSSES, Architecture, parse_layers


def _leaf_types(model) -> list[str]:
    return [type(m).__name__ for m in model.layers()]


def test_model_shape_and_layers():
    model = Architecture((4, 8, 6, 3), activation="tanh", loss="cross-entropy").model()
    assert _leaf_types(model) == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    linears = [m for m in model.layers() if isinstance(m, sn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 8), (8, 6), (6, 3)]
    assert all(m.weight.dtype == np.float32 for m in linears)


@pytest.mark.parametrize("loss, tail, cls", [
    ("cross-entropy", None, sn.CrossEntropyLoss), ("nll", "LogSoftmax", sn.NLLLoss),
    ("mse", None, sn.MSELoss), ("bce", "Sigmoid", sn.BCELoss),
    ("bce-with-logits", None, sn.BCEWithLogitsLoss),
])
def test_each_loss_gets_the_output_it_expects(loss, tail, cls):
    arch = Architecture((3, 4, 2), activation="relu", loss=loss)
    assert _leaf_types(arch.model())[-1] == (tail or "Linear")
    fn = arch.loss_function("sum")
    assert type(fn) is cls and fn.reduction == "sum"
    sn.derive(arch.model(), fn)  # and the pair derives


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_name_builds(name):
    model = Architecture((2, 3, 2), activation=name).model()
    assert isinstance(model.layers()[1], sn.Activation)


def test_single_layer_has_no_activation():
    assert _leaf_types(Architecture((5, 2), loss="mse").model()) == ["Linear"]


def test_float64():
    model = Architecture((2, 2), dtype="float64").model()
    assert model.layers()[0].weight.dtype == np.float64


@pytest.mark.parametrize("kwargs, message", [
    ({"layers": (4,)}, "at least an input and an output"),
    ({"layers": (4, 0, 2)}, "layer width 1 must be a positive integer"),
    ({"layers": (4, -3)}, "layer width 1"),
    ({"layers": (True, 2)}, "layer width 0"),
    ({"layers": (4, 2.5)}, "layer width 1"),
    ({"layers": (4, 2), "activation": "swish"}, "unknown activation 'swish'"),
    ({"layers": (4, 2), "loss": "hinge"}, "unknown loss 'hinge'"),
    ({"layers": (4, 2), "dtype": "float16"}, "float32 or float64"),
])
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Architecture(**kwargs)


def test_numpy_integer_widths_are_accepted():
    assert Architecture((np.int64(3), np.int32(2))).layers == (3, 2)


def test_dict_round_trip():
    arch = Architecture((4, 8, 3), activation="gelu", loss="nll", dtype="float64")
    data = arch.to_dict()
    assert data == {"layers": [4, 8, 3], "activation": "gelu", "loss": "nll",
                    "dtype": "float64"}
    assert Architecture.from_dict(data) == arch
    with pytest.raises(ValueError, match="unknown architecture fields"):
        Architecture.from_dict({**data, "dropout": 0.5})


@pytest.mark.parametrize("text, widths", [("784,128,10", (784, 128, 10)), ("4, 8,3", (4, 8, 3)),
                                          (" 2,1 ", (2, 1))])
def test_parse_layers(text, widths):
    assert parse_layers(text) == widths


@pytest.mark.parametrize("text", ["784,,10", "784", "", "a,b", "4,-2", "4;2", "4,2.5",
                                  "4,0,2", "0,3"])
def test_parse_layers_rejects(text):
    with pytest.raises(ValueError, match="--layers"):
        parse_layers(text)


def test_tables_agree():
    assert set(LOSSES) == {"cross-entropy", "nll", "mse", "bce", "bce-with-logits"}
    for cls in ACTIVATIONS.values():
        assert issubclass(cls, sn.Activation)


@pytest.mark.parametrize("layers, loss", [((4, 3), "mse"), ((4, 8, 3), "nll"),
                                          ((5, 4, 3, 2), "bce"), ((2, 1, 1, 1, 2), "mse")])
def test_parameter_shapes_are_the_models_without_building_it(layers, loss):
    arch = Architecture(layers, loss=loss)
    built = {k: v.shape for k, v in arch.model().state_dict().items()}
    assert arch.parameter_shapes() == built
    assert list(arch.parameter_shapes()) == list(built)
