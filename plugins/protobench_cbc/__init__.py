"""Deep and shallow CBC (Saralajew et al., AAAI 2025; Classification-by-Components, NeurIPS 2019) as a protobench plugin."""
