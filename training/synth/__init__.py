"""Procedural dermatology data (SYNTHETIC_DATA.md): healthy skin, eczema triplets, hands, lesions."""

from .render import KINDS, RENDERER_NAME, RENDERER_VERSION, SynthSample, render

__all__ = ["KINDS", "RENDERER_NAME", "RENDERER_VERSION", "SynthSample", "render"]
