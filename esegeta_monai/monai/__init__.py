"""The MONAI layer: bundles as they are, image reading and aligned writing, transforms and the
Ignite handler. It builds on the explainer, the methods and the job model; never on the command."""
