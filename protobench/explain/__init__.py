"""Explanations: prototype regions, attributions and the "because" influences."""
