"""Codec-style decomposition of a clip into first frame + motion (the paper's target spaces).

Decode side (compensate, reconstruct, differences) imports numpy only, so the torch-free serving
component shares it; the encoder's motion search lives in `search.py`.
"""
