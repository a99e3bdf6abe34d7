"""laion_pipe: LAION-style image-text dataset curation on Dask."""
__version__ = "0.1.0"
