"""busi-pipeline: the pipeline steps for segmenting and classifying breast ultrasound images."""

__version__ = "0.1.0"
