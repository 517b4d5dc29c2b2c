"""`perf.flat_params`: the model's weights as one flat parameter per optimizer group, for DeepSpeed ZeRO-1/2.

Why: ZeRO-1/2 do Python work per parameter tensor every step: a gradient hook that buckets each
gradient, the count of the parameters the backward used, the gradient norm, the copies to and from the
fp32 partition; rc3's own non-finite-gradient watch hooks each tensor too. The paper model has 530
tensors, and that walk (with the watch's hooks) was about a third of the host time of a step (BENCHMARKS.md, "Host overhead").
Holding each optimizer group's weights in one flat tensor, and handing the modules views of it for the
forward pass, leaves two tensors to walk. This is what PyTorch FSDP's FlatParameter does inside FSDP;
DeepSpeed has no such option, so it is written here (about a hundred lines).

How: `FlatParameters(model, weight_decay)` is the module DeepSpeed wraps. Its only parameters are
`flat.0` (the weights that decay) and `flat.1` (biases, norms), in `rc3.optim.param_groups` order. For
each forward it splits the flat tensors into views (one `split` per group, so the backward gathers
every gradient into the flat gradient with one concatenation) and puts them where the model's
parameters live for the length of the call; the model's own parameters are kept as aliases of the flat
storage (no gradient), so reading the model outside a forward (state_dict, evaluation) sees the
current weights. `state_dict` / `load_state_dict` / buffers are the model's, under the model's names, so
DeepSpeed's module file is the same as without the lever; its ZeRO partitions hold the flat tensors,
whose layout `flat_params.json` (written beside them by `rc3.pretrain.checkpoints`) records, and
`tools/zero_to_safetensors.py` splits them back into named tensors.

The arithmetic is unchanged: the same weights, the same forward, every gradient the same; the
optimizer's update is elementwise, so only the global gradient norm (a sum of squares over two tensors
instead of 530) may differ in its last bits (tests/test_flat_params.py). Not for ZeRO-3, which
partitions parameters themselves: one flat tensor would be gathered whole (`rc3.pretrain.engine.resolve_ds_config`
refuses it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from rc3.optim import param_groups

LAYOUT_FILE = "flat_params.json"


class FlatParameters(nn.Module):
    """`model` with its trainable weights in one flat parameter per optimizer group (module docstring)."""

    model: nn.Module  # kept in __dict__, not registered as a submodule (see __init__)

    def __init__(self, model: nn.Module, weight_decay: float) -> None:
        super().__init__()
        self.__dict__["model"] = model  # not a submodule: the engine must see the flat tensors only
        names = {p: n for n, p in model.named_parameters()}  # tied weights: one name (the first), as state_dict
        groups = [g for g in param_groups(model.named_parameters(), weight_decay) if g["params"]]
        if not groups:
            raise ValueError("FlatParameters: the model has no trainable parameters (is it wrapped already?)")
        self.weight_decays = [g["weight_decay"] for g in groups]
        self.layout: list[list[tuple[str, tuple[int, ...]]]] = [
            [(names[p], tuple(p.shape)) for p in g["params"]] for g in groups]
        self._members: list[list[nn.Parameter]] = [list(g["params"]) for g in groups]
        self.flat = nn.ParameterList(
            nn.Parameter(torch.cat([p.detach().reshape(-1) for p in ps])) for ps in self._members)
        # where each parameter lives: (module, attribute) pairs, several for a tied weight
        places: dict[int, list[tuple[nn.Module, str]]] = {}
        for module in model.modules():
            for attr, p in module._parameters.items():
                if p is not None:
                    places.setdefault(id(p), []).append((module, attr))
        self._places = [[places[id(p)] for p in ps] for ps in self._members]
        self._sizes = [[p.numel() for p in ps] for ps in self._members]
        self._bound: list[int] = []
        for ps in self._members:
            for p in ps:
                p.requires_grad_(False)  # gradients go to the flat tensors, through the views of a forward
        self._bind()

    # ---- the model's parameters as aliases of the flat storage -----------------------------------
    def _bind(self) -> None:
        """Point the model's parameters at the flat storage (again, after an engine moved it)."""
        with torch.no_grad():
            for flat, members, sizes in zip(self.flat, self._members, self._sizes):
                for p, piece in zip(members, flat.detach().split(sizes)):
                    p.data = piece.view(p.shape)
        self._bound = [f.data_ptr() for f in self.flat]

    def _bind_if_moved(self) -> None:
        # DeepSpeed moves each parameter into its own flat buffer once, at initialisation, and afterwards
        # re-points `.data` at views of that same buffer: the storage, and so this check, stay put.
        if [f.data_ptr() for f in self.flat] != self._bound:
            self._bind()

    # ---- forward -------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._bind_if_moved()
        # Views with autograd history: each group's gradients reach its flat tensor through one split.
        # They are put into the modules' parameter dictionaries directly (as FSDP does): nn.Module's
        # __setattr__ admits only nn.Parameter there, and a swap through it costs ~10x more per tensor.
        swapped: list[tuple[dict[str, Any], str, Any]] = []
        try:
            for flat, places, sizes, members in zip(self.flat, self._places, self._sizes, self._members):
                for where, piece, p in zip(places, flat.split(sizes), members):
                    view = piece.view(p.shape)
                    for module, attr in where:
                        swapped.append((module._parameters, attr, p))
                        module._parameters[attr] = view
            return self.model(*args, **kwargs)
        finally:
            for params, attr, p in swapped:
                params[attr] = p

    # ---- what an engine saves and loads: the model's own names ---------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self._bind_if_moved()
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if assign:
            raise ValueError("FlatParameters.load_state_dict copies into the flat storage; assign=True would detach "
                             "the model's weights from it")
        self._bind_if_moved()
        return self.model.load_state_dict(state_dict, strict=strict)  # copies in place: into the flat tensors

    def named_buffers(self, *args: Any, **kwargs: Any) -> Iterator[tuple[str, torch.Tensor]]:
        return self.model.named_buffers(*args, **kwargs)

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        return self.model.buffers(recurse)

    def _apply(self, fn: Any, recurse: bool = True) -> FlatParameters:  # type: ignore[override]
        # .to(device) / .bfloat16() from an engine: the flat tensors, and the model's buffers (its
        # parameters follow the flat storage: re-pointed below)
        super()._apply(fn, recurse)
        held = {id(p) for ps in self._members for p in ps}
        with torch.no_grad():
            for module in self.model.modules():
                for key, buf in module._buffers.items():
                    if buf is not None:
                        module._buffers[key] = fn(buf)
                for p in module._parameters.values():
                    if p is not None and id(p) not in held:  # frozen weights: not in a flat tensor
                        p.data = fn(p.data)
        self._bind()
        return self

    def train(self, mode: bool = True) -> FlatParameters:
        super().train(mode)
        self.model.train(mode)
        return self

    # ---- optimizer groups and the layout ------------------------------------------------------
    def optimizer_groups(self) -> list[dict[str, Any]]:
        """One optimizer group per flat tensor, with its weight decay (rc3.optim.param_groups' rule)."""
        return [{"params": [flat], "weight_decay": wd} for flat, wd in zip(self.flat, self.weight_decays)]

    def layout_json(self) -> str:
        return json.dumps({"flat": [{"name": f"flat.{i}", "tensors": [[n, list(s)] for n, s in group]}
                                    for i, group in enumerate(self.layout)]})


def unflatten(state: dict[str, torch.Tensor], layout_file: Path) -> dict[str, torch.Tensor]:
    """`state` (a consolidated checkpoint holding `flat.N` tensors) with each flat tensor split back into the
    model's named tensors, as `layout_file` (flat_params.json) records them."""
    try:
        layout = json.loads(layout_file.read_text())["flat"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{layout_file}: cannot read the flat-parameter layout ({err}); the checkpoint holds "
                         "perf.flat_params tensors and needs it") from None
    out = {k: v for k, v in state.items() if not k.startswith("flat.")}
    for group in layout:
        flat = state.get(group["name"])
        if flat is None:
            raise ValueError(f"{layout_file} names {group['name']} but the checkpoint does not hold it")
        sizes = [int(torch.Size(shape).numel()) for _, shape in group["tensors"]]
        if sum(sizes) != flat.numel():
            raise ValueError(f"{layout_file}: {group['name']} holds {flat.numel()} values, its layout {sum(sizes)}")
        for (name, shape), piece in zip(group["tensors"], flat.reshape(-1).split(sizes)):
            out[name] = piece.reshape(shape).clone()
    return out
