"""The network of the shipped deep-supervision demo bundles (``bundles/vessel_mss*_demo``).

Runtime code their ``inference.yaml`` names (``esegeta_monai.demo.networks.UNetMSS``); the demo
bundles' synthetic data and training scripts are not library code and live outside the package,
in the repository's ``training/`` folder.
"""
