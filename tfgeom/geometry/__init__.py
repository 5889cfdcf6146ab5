"""Input-space geometry of the decision boundary.

DeepFool and attacks (`deepfool`, `attacks`, `boundary`), Hessian-vector
products and Lanczos (`hvp`, `lanczos`), principal curvatures (`curvature`),
2-D sections (`sections`), the curved subspace (`subspace`), paths between
inputs (`connectivity`) and curvature-asymmetry detection (`detection`).
"""
