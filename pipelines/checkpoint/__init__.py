"""Checkpoints: the file format of a saved component (`format`) and the run folder (`run`).

`load_run` is the one way to read a trained run back; training saves only through `save_stage`.
"""

from meshtalk.pipelines.checkpoint.format import (
    CONFIG_FILE,
    OPTIMIZER_FILE,
    TRAINER_FILE,
    WEIGHTS_FILE,
    load_component_state,
    load_optimizer,
    load_tensors,
    model_config,
    read_component_config,
    read_json,
    read_trainer_state,
    readable,
    recover,
    save_component,
    save_tensors,
    write_checkpoint,
)
from meshtalk.pipelines.checkpoint.run import (
    COMPONENTS,
    LATENT,
    PRIOR,
    RUN_RECORD,
    Run,
    StageCheckpoint,
    load_run,
    resume_stage,
    save_stage,
    stage_folder,
)

__all__ = [
    "COMPONENTS",
    "CONFIG_FILE",
    "LATENT",
    "OPTIMIZER_FILE",
    "PRIOR",
    "RUN_RECORD",
    "TRAINER_FILE",
    "WEIGHTS_FILE",
    "Run",
    "StageCheckpoint",
    "load_component_state",
    "load_optimizer",
    "load_run",
    "load_tensors",
    "model_config",
    "read_component_config",
    "read_json",
    "read_trainer_state",
    "readable",
    "recover",
    "resume_stage",
    "save_component",
    "save_stage",
    "save_tensors",
    "stage_folder",
    "write_checkpoint",
]
