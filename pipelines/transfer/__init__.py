"""Moving an animation onto a mesh of another topology: registration, binding, saved transfers."""

from meshtalk.pipelines.transfer.binding import (
    Transfer,
    bind,
    load_transfer,
    make_transfer,
    save_transfer,
)
from meshtalk.pipelines.transfer.inputs import mesh_sha256, read_landmark_pairs, read_target
from meshtalk.pipelines.transfer.registration import Registration, register
from meshtalk.pipelines.transfer.source import (
    PreparedTransfer,
    prepare_transfer,
    run_template_mesh,
    transfer_for,
)

__all__ = [
    "PreparedTransfer",
    "Registration",
    "Transfer",
    "bind",
    "load_transfer",
    "make_transfer",
    "mesh_sha256",
    "prepare_transfer",
    "read_landmark_pairs",
    "read_target",
    "register",
    "run_template_mesh",
    "save_transfer",
    "transfer_for",
]
