"""The device the engine runs on: picking it from the CLI's --device, and waiting for it."""
import torch

from .errors import InputError


def pick_device(name: str) -> torch.device:
    """"auto" (xpu, then cuda, then cpu) or a device type that must be usable here; else an InputError
    that says what to fix."""
    available = {
        "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(),
        "cuda": torch.cuda.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(n for n in ("xpu", "cuda", "cpu") if available[n])
    if name == "xpu" and not available["xpu"]:
        # Two different fixes: a wheel without XPU support needs another PyTorch, an XPU build needs the driver.
        if not (hasattr(torch, "xpu") and torch.xpu._is_compiled()):
            raise InputError(f"device 'xpu' is not available: this PyTorch build ({torch.__version__}) has no XPU "
                             "support; install one from https://download.pytorch.org/whl/xpu, or try --device cpu")
        raise InputError("device 'xpu' is not available: PyTorch has XPU support but finds no Intel GPU; check the "
                         "GPU driver (Level Zero runtime) and access to /dev/dri (render group), or try --device cpu")
    if not available[name]:
        raise InputError(f"device {name!r} is not available in this PyTorch build or machine (try --device cpu)")
    return torch.device(name)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)
