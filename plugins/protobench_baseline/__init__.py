"""Black-box baseline: the same timm backbone with a linear head."""
