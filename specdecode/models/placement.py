"""Targets larger than one device: tensor parallel under torchrun, and accelerate's device map.

Tensor parallel (`--tp N`): torchrun starts N processes and sets RANK, LOCAL_RANK and
WORLD_SIZE; `init_tensor_parallel` checks that N equals WORLD_SIZE and joins the process group
(NCCL on CUDA, one GPU per rank, LOCAL_RANK's; gloo on the CPU). The target then loads with
transformers' tensor-parallel plan (the architecture's `base_model_tp_plan`: column-parallel
q/k/v/gate/up, row-parallel o/down with one all-reduce each, the LM head's output gathered), so
every rank gets the same full logits; the draft loads whole on every rank. Every rank runs the
same rounds and takes the same decisions; only rank 0 prints and writes files (`is_main_process`).

Device map (`--device-map auto`): accelerate places whole layers across GPUs, the CPU and disk
within `--max-memory`; its hooks move activations between them.

`placement` is what `inspect` reports: where the weights of a pair would go and the bytes per
device, computed from parameter sizes on the meta device (nothing is loaded).

What it does not: run the model (the engine does, the same on every rank), or decide how a
decode step runs (accel/execution.py refuses the fused layers for sharded or hooked models).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

__all__ = [
    "execution_device",
    "init_tensor_parallel",
    "is_main_process",
    "is_sharded",
    "placement",
    "shared_seed",
    "world",
]


def world() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) in a plain process."""
    env = os.environ

    def num(key: str, default: int) -> int:
        value = env.get(key, "").strip()
        return int(value) if value.isdigit() else default

    return num("RANK", 0), num("LOCAL_RANK", 0), num("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """Rank 0 (or a plain process): the one that prints and writes result files."""
    return world()[0] == 0


def check_world(tp: int) -> None:
    """--tp N must match the processes torchrun started (one line, exit 2, otherwise)."""
    from ..settings import SettingsError

    _, _, size = world()
    if tp == size:
        return
    if size == 1:
        raise SettingsError(
            f"--tp {tp} needs {tp} processes: run it as `torchrun --nproc-per-node {tp} -m specdecode ... --tp {tp}`"
        )
    raise SettingsError(
        f"--tp {tp} but torchrun started {size} processes (WORLD_SIZE={size}): pass --tp {size} "
        f"or start it with --nproc-per-node {tp}"
    )


def init_tensor_parallel(tp: int, device_setting: str):
    """Join torchrun's process group for `tp` ranks; return this rank's device.

    CUDA: NCCL, one GPU per rank (cuda:LOCAL_RANK). CPU (no CUDA, or --device cpu on a machine
    without one): gloo. transformers builds its mesh on the machine's accelerator, so the CPU is
    refused on a CUDA machine rather than half-used."""
    import torch
    import torch.distributed as dist

    from ..settings import SettingsError
    from .loading import ModelLoadError

    check_world(tp)
    _, local_rank, _ = world()
    cuda = torch.cuda.is_available()
    if device_setting.startswith("cuda") and ":" in device_setting:
        raise SettingsError(f"--device {device_setting} with --tp: each rank takes its own GPU (cuda:LOCAL_RANK); use --device cuda")
    if device_setting.startswith("cuda") and not cuda:
        raise ModelLoadError("--tp on CUDA was asked for but no CUDA GPU is available (use --device cpu)")
    if device_setting == "cpu" and cuda:
        raise SettingsError("--tp with --device cpu: on a machine with CUDA GPUs the shards go to the GPUs (use --device cuda)")
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise ModelLoadError(
                f"rank {local_rank} has no GPU: {torch.cuda.device_count()} visible for --tp {tp} on this host"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        if cuda:
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def shared_seed(device) -> int:
    """A random seed drawn on rank 0 and broadcast: sampling under --tp without --seed must still
    draw the same numbers on every rank (each rank takes the same acceptance decisions)."""
    import torch
    import torch.distributed as dist

    seed = torch.randint(0, 2**62, (1,), dtype=torch.long)
    seed = seed.to(device)
    dist.broadcast(seed, src=0)
    return int(seed.item())


def is_sharded(model) -> bool:
    """True when the model holds DTensor (tensor-parallel) weights."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def execution_device(hf_device_map: dict[str, Any]):
    """Where a device-mapped model takes its inputs: accelerate's main device, the first GPU in
    the map, else the CPU (layers on cpu or disk then run on the CPU)."""
    import torch

    gpus = [d for d in hf_device_map.values() if isinstance(d, int) or (isinstance(d, str) and d.startswith("cuda"))]
    if not gpus:
        return torch.device("cpu")
    first = gpus[0]
    return torch.device("cuda", first) if isinstance(first, int) else torch.device(first)


def accelerate_max_memory(max_memory: dict[str, str] | None) -> dict[Any, str] | None:
    """Settings' {"0": "20GiB", "cpu": ...} -> accelerate's {0: "20GiB", "cpu": ...}."""
    if max_memory is None:
        return None
    return {int(k) if k.isdigit() else k: v for k, v in max_memory.items()}


# ---- inspect: where a pair's weights would go --------------------------------------------------

def _param_bytes(model, bytes_per: float) -> dict[str, float]:
    """name -> bytes of each (deduplicated) parameter of a meta-device model."""
    out: dict[str, float] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out[name] = p.numel() * bytes_per
    return out


def _tp_plan(model) -> dict[str, str]:
    """The model's full tensor-parallel plan (module patterns relative to the model)."""
    plan: dict[str, str] = dict(getattr(model, "_tp_plan", None) or {})
    base_prefix = getattr(model, "base_model_prefix", "model")
    base_plan = getattr(model.config.get_text_config(), "base_model_tp_plan", None) or \
        getattr(model.config, "base_model_tp_plan", None) or {}
    for pattern, style in base_plan.items():
        plan.setdefault(f"{base_prefix}.{pattern}", style)
    return plan


def tp_split(model, bytes_per: float, tp: int) -> tuple[float, float, bool]:
    """(sharded bytes, replicated bytes, whether the architecture has a plan) of a meta model."""
    plan = _tp_plan(model)
    sharded = replicated = 0.0
    for name, nbytes in _param_bytes(model, bytes_per).items():
        module = name.rsplit(".", 1)[0]
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in plan):
            sharded += nbytes
        else:
            replicated += nbytes
    return sharded, replicated, bool(plan)


def device_map_split(model, bytes_per: float, dtype_name: str, device_map: str,
                     max_memory: dict[str, str] | None) -> tuple[dict[str, str], dict[str, float]]:
    """(module -> device, device -> weight bytes) as accelerate would place the meta model."""
    import torch
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype_name, torch.float32)
    mm = accelerate_max_memory(max_memory)
    no_split = getattr(model, "_no_split_modules", None) or []
    if device_map != "sequential":
        mm = get_balanced_memory(model, max_memory=mm, no_split_module_classes=no_split, dtype=dtype,
                                 low_zero=device_map == "balanced_low_0")
    dmap = infer_auto_device_map(model, max_memory=mm, no_split_module_classes=no_split, dtype=dtype)
    per: dict[str, float] = {}
    for name, nbytes in _param_bytes(model, bytes_per).items():
        best = ""
        for module in dmap:
            if (module == "" or name == module or name.startswith(module + ".")) and len(module) >= len(best):
                best = module
        where = dmap.get(best, "cpu")
        key = f"cuda:{where}" if isinstance(where, int) else str(where)
        per[key] = per.get(key, 0.0) + nbytes
    return {k: (f"cuda:{v}" if isinstance(v, int) else str(v)) for k, v in dmap.items()}, per


def placement(settings, target_model, draft_bytes: int, target_bytes: int, dtype_name: str,
              bytes_per: float) -> dict[str, Any]:
    """How `inspect` says the pair would be placed: {"mode", "tp", "per_device": [{"device",
    "target_bytes", "draft_bytes", "total_bytes"}], ...}. The draft goes whole on every rank
    (tp) or on the main device (device map, and one device)."""
    if settings.tp > 1:
        sharded, replicated, has_plan = tp_split(target_model, bytes_per, settings.tp)
        scale = target_bytes / max(1.0, sharded + replicated)  # 4-bit and other estimates
        per_rank = (sharded / settings.tp + replicated) * scale
        rows = [{"device": f"rank {r}", "target_bytes": int(per_rank), "draft_bytes": draft_bytes,
                 "total_bytes": int(per_rank) + draft_bytes} for r in range(settings.tp)]
        return {
            "mode": "tensor parallel",
            "tp": settings.tp,
            "tp_plan": has_plan,
            "note": (f"target sharded over {settings.tp} ranks (torchrun --nproc-per-node {settings.tp}), "
                     "draft replicated on every rank"
                     + ("" if has_plan else "; this architecture has no tensor-parallel plan: --tp cannot load it")),
            "per_device": rows,
        }
    if settings.device_map is not None:
        modules, per = device_map_split(target_model, bytes_per, dtype_name, settings.device_map, settings.max_memory)
        scale = target_bytes / max(1.0, sum(per.values()))
        order = sorted(per, key=lambda d: (d in ("cpu", "disk"), d == "disk", d))
        main = next((d for d in order if d.startswith("cuda")), "cpu")
        rows = [{"device": d, "target_bytes": int(per[d] * scale), "draft_bytes": draft_bytes if d == main else 0,
                 "total_bytes": int(per[d] * scale) + (draft_bytes if d == main else 0)} for d in order]
        if main not in per:
            rows.insert(0, {"device": main, "target_bytes": 0, "draft_bytes": draft_bytes, "total_bytes": draft_bytes})
        layers: dict[str, int] = {}
        for module, d in modules.items():
            if ".layers." in f".{module}." or module.endswith(".layers"):
                layers[d] = layers.get(d, 0) + 1
        return {
            "mode": f"device map ({settings.device_map})",
            "tp": 1,
            "max_memory": settings.max_memory,
            "note": "layers placed by accelerate; offloaded layers (cpu, disk) are moved to the main device for each "
                    "forward; the draft runs on the main device",
            "per_device": rows,
            "modules": modules,
        }
    from .loading import resolve_device

    try:
        device = str(resolve_device(settings.device))
    except Exception:  # noqa: BLE001 - a device that is not here is reported when loading
        device = settings.device
    return {
        "mode": "one device",
        "tp": 1,
        "note": "target and draft on one device",
        "per_device": [{"device": device, "target_bytes": target_bytes, "draft_bytes": draft_bytes,
                        "total_bytes": target_bytes + draft_bytes}],
    }
