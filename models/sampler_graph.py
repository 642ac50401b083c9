"""Replaying the sampler's step as CUDA graphs: one frame's step, captured once per phase.

A frame's step (`PriorSampler._frame`) reads and writes only buffers made once, allocates
nothing and branches only on the phase of the history buffers, so each phase is captured once
and replayed for every frame of that phase: the launch cost of a step's many small kernels is
paid once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def use_graph(device: torch.device, phases: int, dilations, record_logits: bool, graph) -> bool:
    """Whether to replay graphs: `graph` asked (True/False) or None (on CUDA, when possible)."""
    periodic = all(phases % d == 0 for d in dilations)
    if graph is None:
        return device.type == "cuda" and periodic and not record_logits
    if graph and device.type != "cuda":
        raise ValueError(f"graph=True is for CUDA; the model is on {device}")
    if graph and (record_logits or not periodic):
        raise ValueError(
            f"graph=True needs record_logits off and dilations that divide {phases}, got "
            f"{dilations}"
        )
    return bool(graph)


def capture_frames(
    frame: Callable[[int], None], frame_index: torch.Tensor, device: torch.device, phases: int
) -> list:
    """One CUDA graph per phase of `frame` (a step), after a warm-up on a side stream."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side), torch.inference_mode():
        for phase in range(phases):
            frame_index.zero_()
            frame(phase)
    current.wait_stream(side)
    graphs = []
    with torch.inference_mode():
        for phase in range(phases):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                frame(phase)
            graphs.append(graph)
    return graphs
