"""The tfgeom command line (installed as `tfgeom.cli`, console script `tfgeom`)."""
