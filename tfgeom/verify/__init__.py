"""Certification by bound propagation.

The feature extractor as a graph of operators (`graph`, `operators`), input
sets (`sets`), interval, backward (CROWN) and forward linear bounds (`ibp`,
`crown`, `forward`, with conv layers in patch form, `patches`), optimised
slopes (`alpha_crown`), branch and bound (`bab`), the exact MILP (`milp`) and
the certificates built on them (`certification`: the choice of method lives
there). Importing IBP or CROWN does not import cvxpy.
"""
