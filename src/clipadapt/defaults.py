"""Defaults several layers share, in a module that imports nothing (the CLI reads them
before any heavy import)."""

DEFAULT_VIEWS = 4
"""Augmented views per support image for methods that read them. Four keeps a cold cache
cheap (4 x ~1,000 support images for PACS-100 at ~35 img/s) while giving the trained methods
some augmentation; results record the number."""

SELECTION_MODES = ("validation", "cv")
"""How searched hyperparameters are chosen: accuracy on the few-shot validation set, or
stratified k-fold cross-validation over the labelled few-shot images (support + validation
pooled, never test)."""

CALIBRATION_MODES = ("none", "temperature")
"""Post-hoc calibration of a method's probabilities: none, or temperature scaling (one scalar
T fitted by minimising the NLL on the few-shot validation set; clipadapt.calibration)."""
