"""The feature space of the last hidden layer.

Training features and the head's exact polyhedral regions
(`feature_space`), convex hulls and distances to them (`hull`) and regions
certified to keep a class (`regions`).
"""
