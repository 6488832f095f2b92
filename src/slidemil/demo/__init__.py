"""The built-in demo dataset generator: procedural H&E slides with tumour ground truth.

A product of its own, not part of slide reading: ``slidemil.slides`` never imports it (checked by the
import-linter contracts in pyproject.toml). Modules, bottom up: :mod:`.fields` (periodic noise and fibre
textures), :mod:`.shapes` (tissue, tumour and gland outlines), :mod:`.objects` (nuclei and glands),
:mod:`.scene` (one slide in micrometres), :mod:`.raster` (seam-free polygon rasterisers), :mod:`.render`
(scene -> RGB blocks), :mod:`.svs_writer` (streamed pyramidal Aperio ``.svs``) and :mod:`.dataset` (specs,
ground truth, the manifest).
"""
