"""Every settings dataclass is built from JSON by the one strict helper, drlcore.config.from_dict:
one message style for unknown keys and wrong types, whichever config it is."""

from __future__ import annotations

import re

import pytest

from drlcore.analysis.analyze import AnalyzeConfig
from drlcore.disentangle.cells import CellsConfig
from drlcore.data.discover import IngestConfig
from drlcore.disentangle.dsprites import DSpritesConfig
from drlcore.errors import DrlError
from drlcore.embedding.features import FeatureConfig
from drlcore.runs.pipeline import PipelineConfig
from drlcore.disentangle.source import SourceTrainConfig
from drlcore.disentangle.transfer import TransferConfig
from drlcore.disentangle.vae import VAEConfig

CONFIGS = [AnalyzeConfig, CellsConfig, IngestConfig, DSpritesConfig, FeatureConfig,
           PipelineConfig, SourceTrainConfig, TransferConfig, VAEConfig]
# A scalar int setting of each config, to give a value of the wrong type.
INT_FIELD = {AnalyzeConfig: "seed", CellsConfig: "seed", IngestConfig: "max_file_bytes",
             DSpritesConfig: "seed", FeatureConfig: "batch_size",
             PipelineConfig: "transfer_epochs", SourceTrainConfig: "seed",
             TransferConfig: "epochs", VAEConfig: "latent_dim"}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_unknown_keys_are_refused_in_one_message_style(cls):
    with pytest.raises(DrlError) as info:
        cls.from_dict({"no_such_setting": 1})
    assert re.fullmatch(r"unknown .+ setting\(s\) \['no_such_setting'\]; known: \[.+\]",
                        str(info.value)), str(info.value)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_wrong_types_are_refused_in_one_message_style(cls):
    name = INT_FIELD[cls]
    with pytest.raises(DrlError) as info:
        cls.from_dict({name: "three"})
    assert re.fullmatch(rf".+ setting '{name}' must be int.*, not str \('three'\)",
                        str(info.value)), str(info.value)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_a_non_mapping_is_refused(cls):
    with pytest.raises(DrlError, match="must be a mapping"):
        cls.from_dict(["seed", 1])
