"""One parameter dataclass per stage, defined once: its defaults are the config schema's."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from wsiseg.config.params import (
    ConvertParams,
    DemoSpec,
    PatchParams,
    PredictParams,
    ReportParams,
    TrainParams,
    with_options,
)
from wsiseg.config.schema import SCHEMA

# (config section, its dataclass, keys only the schema has (the workflow's own), fields only the class has)
STAGES = [
    ("demo", DemoSpec, {"enabled"}, {"seed", "mpp"}),  # seed: the config's top-level seed
    ("convert", ConvertParams, set(), {"workers"}),  # workers: the job's threads
    ("patches", PatchParams, set(), {"seed"}),
    ("train", TrainParams, {"folds"}, {"seed", "extra"}),  # folds: one train job per fold
    ("predict", PredictParams, {"model"}, set()),  # model: a model folder instead of training
    ("report", ReportParams, set(), set()),
]


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize(("section", "cls", "schema_only", "class_only"), STAGES, ids=[s[0] for s in STAGES])
def test_every_dataclass_default_equals_the_schema_default(section, cls, schema_only, class_only):
    schema = yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(schema) - set(fields) == schema_only, "schema keys without a field"
    assert set(fields) - set(schema) == class_only, "fields without a schema key"
    wrong = {
        name: (_plain(_default(fields[name])), spec.get("default"))
        for name, spec in schema.items()
        if name in fields and _plain(_default(fields[name])) != spec.get("default")
    }
    assert not wrong, f"{cls.__name__} defaults (dataclass, schema) differ: {wrong}"


def test_single_options_replace_fields_and_unknown_names_fail():
    params = with_options(ConvertParams(), {"chunk": 256, "compression": "jpeg"})
    assert (params.chunk, params.compression, params.level) == (256, "jpeg", 5)
    assert with_options(params, {}) is params
    with pytest.raises(TypeError, match=r"unexpected option\(s\) \['chunks'\] for ConvertParams"):
        with_options(ConvertParams(), {"chunks": 256})


def test_stage_signatures_are_keyword_only_past_their_inputs():
    """Long signatures take their settings by name (``convert_slide(image, out, mask, params=...)``)."""
    import inspect

    from wsiseg.convert import convert_slide
    from wsiseg.report import make_report

    for function, positional in ((convert_slide, 3), (make_report, 7)):
        kinds = [p.kind for p in inspect.signature(function).parameters.values()]
        assert kinds[:positional] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * positional
        assert inspect.Parameter.POSITIONAL_OR_KEYWORD not in kinds[positional:], function.__name__


def test_accepted_architectures_and_encoders_are_smps_own():
    """The dry-run checks accept exactly the architectures and encoders the installed smp registers."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    from wsiseg.config.networks import ARCHS, ENCODERS

    assert sorted(ARCHS) == sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())
    assert sorted(ENCODERS) == sorted(smp.encoders.get_encoder_names())


def test_the_network_defaults_are_the_train_defaults():
    """``SegmentationModule()`` and ``build_network()`` build what config ``train`` builds by default."""
    import inspect

    pytest.importorskip("torch")
    from wsiseg.nn.module import SegmentationModule, build_network

    train = TrainParams()
    for function in (build_network, SegmentationModule.__init__):
        parameters = inspect.signature(function).parameters
        for name in ("arch", "encoder", "encoder_weights", "encoder_depth", "decoder_channels"):
            assert parameters[name].default == getattr(train, name), (function.__qualname__, name)
    for name in ("lr", "weight_decay", "scheduler", "epochs", "channels_last", "compile"):
        assert inspect.signature(SegmentationModule.__init__).parameters[name].default == getattr(train, name), name


def test_old_checkpoints_without_network_keys_keep_smps_defaults():
    pytest.importorskip("torch")
    from wsiseg.nn.module import upgrade_hparams

    upgraded = upgrade_hparams({"arch": "Unet", "dice_weight": 1.0})
    assert (upgraded["encoder_depth"], upgraded["decoder_channels"]) == (5, None)
    assert upgraded["loss"] == {"dice": 1.0, "bce": 1.0}
    assert upgrade_hparams({"encoder_depth": 4})["encoder_depth"] == 4
