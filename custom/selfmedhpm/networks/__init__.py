from .hpm_vit import HPMEncoder, HPMMaskedAutoEncoder, PatchLossMap

__all__ = ["HPMEncoder", "HPMMaskedAutoEncoder", "PatchLossMap"]
