"""The runtime: what every analysis builds on.

Loading a model (`loading`), finding its logits and feature/head split
(`heads`), the compiled programs and their one cache (`programs`), input
validation (`validation`), data sources (`data`), memory budgets
(`resources`), Keras layer kinds (`layers`), statistics with bootstrap
intervals (`statistics`) and the quiet TensorFlow backend (`backend`).
Nothing here imports any other part of tfgeom except `tfgeom.errors`.
"""
