"""What a person reads: leaderboards, the baseline check, galleries, plots, "this looks like that"."""
