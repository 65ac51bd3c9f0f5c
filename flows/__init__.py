"""Prefect flows for dvdm: pipeline, scheduled retrain, promote (thin wrappers over dvdm.stages)."""
