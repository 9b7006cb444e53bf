from .hpm_vit import HPMEncoder, HPMMaskedAutoEncoder, PatchLossMap, freeze_cross_attn_norms

__all__ = ["HPMEncoder", "HPMMaskedAutoEncoder", "PatchLossMap", "freeze_cross_attn_norms"]
