"""Optimisers and schedules: Muon for block matrices, Adam for the rest, wall-clock warmdown."""
