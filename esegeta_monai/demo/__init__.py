"""Demo material: synthetic TOF-MRA-like vessel phantoms and the training script of the
``bundles/vessel_mra_demo`` bundle."""
