"""Language-model distillation: `mentor lm-distill` (distill), token-level KD losses (losses), the GUIDE
initialiser (guide)."""
