"""jaxlava data layer: templates, processor, storage (TFDS/ArrayRecord), Grain pipelines, converters, shapes world.

Import the submodules directly (`from jaxlava.data.pipeline import sft_batches`); this package imports nothing
heavy on its own.
"""
