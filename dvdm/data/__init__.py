"""Datasets: sources that yield clips with captions, splits and provenance; shards and manifests on disk."""
