"""INT8 post-training quantization, in four parts: the recipe (``recipe.py``), calibration statistics
and building a model from them (``calibration.py``), the accuracy-aware search over recipes
(``search.py``, reported by ``report.py``), and writing the INT8 model folder (``model.py``)."""
